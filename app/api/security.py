"""API keys: NEXTWORD_API_KEY guards the model routes, NEXTWORD_ADMIN_KEY the admin routes,
NEXTWORD_METRICS_KEY GET /metrics.

A key is sent as `X-API-Key: <key>` or `Authorization: Bearer <key>`, and compared in constant
time (hmac.compare_digest), so the time an answer takes says nothing about how much of a
guess was right. Keys live in SecretStr settings: they never appear in a repr, a log line or
an error message, and neither does what a client sent.

The two keys are separate on purpose: a client that may predict may not swap the model. The
dependencies here are only attached when their key is set (see `create_app`), so the OpenAPI
document declares a security scheme exactly where one is enforced.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from app.api.errors import Unauthorized

logger = logging.getLogger("nextword")

API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    description="The key, as set in NEXTWORD_API_KEY (NEXTWORD_ADMIN_KEY for /admin, "
    "NEXTWORD_METRICS_KEY for /metrics).",
    auto_error=False,
)
BEARER = HTTPBearer(
    scheme_name="Bearer",
    description="The same key as `Authorization: Bearer <key>`.",
    auto_error=False,
)


def key_matches(presented: str | None, expected: SecretStr) -> bool:
    """Constant-time comparison of what was sent with the key (bytes, as sent on the wire)."""
    if not presented:
        return False
    # Starlette decodes header bytes as Latin-1: encoding back gives the bytes that were sent.
    sent = presented.encode("latin-1", errors="replace")
    return hmac.compare_digest(sent, expected.get_secret_value().encode("utf-8"))


def check_key(
    request: Request,
    expected: SecretStr | None,
    header: str | None,
    bearer: HTTPAuthorizationCredentials | None,
    what: str,
) -> None:
    """Raise Unauthorized unless one of the presented keys is `expected` (None: no key needed)."""
    if expected is None:
        return
    candidates = [header, bearer.credentials if bearer else None]
    # Every candidate is compared (no short-circuit), so two headers cost the same as one.
    results = [key_matches(candidate, expected) for candidate in candidates]
    if any(results):
        return
    sent = any(candidates)
    logger.debug(
        "refused %s %s: %s", request.method, request.url.path, "wrong key" if sent else "no key"
    )
    if sent:
        raise Unauthorized(f"the {what} is not valid")
    raise Unauthorized(
        f"this route needs the {what}: send it as `X-API-Key: <key>` or `Authorization: Bearer "
        "<key>`"
    )


# The security classes as dependencies, so that OpenAPI declares the schemes.
HeaderKey = Annotated[str | None, Security(API_KEY_HEADER)]
BearerKey = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


async def require_api_key(request: Request, header: HeaderKey, bearer: BearerKey) -> None:
    check_key(request, request.app.state.settings.api_key, header, bearer, "API key")


async def require_admin_key(request: Request, header: HeaderKey, bearer: BearerKey) -> None:
    # Admin routes are only mounted when NEXTWORD_ADMIN_KEY is set; this never lets one through
    # without it.
    expected: SecretStr | None = request.app.state.settings.admin_key
    if expected is None:
        raise Unauthorized("the admin routes are off")
    check_key(request, expected, header, bearer, "admin key")


async def require_metrics_key(request: Request, header: HeaderKey, bearer: BearerKey) -> None:
    # Only attached when NEXTWORD_METRICS_KEY is set: /metrics is open otherwise, like /health.
    check_key(request, request.app.state.settings.metrics_key, header, bearer, "metrics key")
