"""Server settings: one object, read from `NEXTWORD_*` environment variables (or given in code).

    NEXTWORD_MODEL_STORE     folder of models, `<store>/<name>/<version>/`   (model_store)
    NEXTWORD_MODEL_NAME      which model to serve                             (ptb)
    NEXTWORD_MODEL_VERSION   a version number or `latest`                     (latest)
    NEXTWORD_HOST            address to listen on                             (127.0.0.1)
    NEXTWORD_PORT            port to listen on                                (8000)
    NEXTWORD_MAX_TEXT_CHARS  longest `text` accepted by POST /predict         (10000)
    NEXTWORD_MAX_BODY_BYTES  largest request body accepted                    (65536)
    NEXTWORD_LOG_LEVEL       critical | error | warning | info | debug        (info)
    NEXTWORD_RELOAD_INTERVAL_S   seconds between looks for a new version; 0 = never   (0)
    NEXTWORD_MAX_IN_FLIGHT       requests worked on at once; past it 503 + Retry-After (128)
    NEXTWORD_PREDICT_TIMEOUT_S   longest wait for a prediction; past it 504            (5)
    NEXTWORD_BODY_TIMEOUT_S      longest wait for a request's whole body; past it 408  (5)
    NEXTWORD_KEEP_ALIVE_S        how long an idle connection stays open                (75)
    NEXTWORD_SHUTDOWN_TIMEOUT_S  longest wait for requests in flight on SIGTERM        (8)
    NEXTWORD_API_KEY         key required on /predict and /models (X-API-Key or Bearer)  (none)
    NEXTWORD_ADMIN_KEY       key for /admin/*; unset, the admin routes do not exist      (none)
    NEXTWORD_CORS_ORIGINS    comma-separated origins browsers may call from          (none)
    NEXTWORD_CACHE_SIZE      states (and texts) kept for type-ahead; 0 = no cache   (4096)
    NEXTWORD_BATCH_MAX_SIZE  most concurrent requests in one batch                  (8)
    NEXTWORD_BATCH_MAX_WAIT_MS  longest wait for a batch to fill; alone: none       (0)
    NEXTWORD_MODEL_PROCESS   compute batches in a forked process                (true on Linux)
    NEXTWORD_BLOCKLIST       a file of words never suggested, added to the shipped list  (none)

Every value is checked when the settings are made, so a bad one stops the server before it
starts, with a message naming the variable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.inference.blocklist import BlocklistError, read_blocklist
from app.store import check_name

ENV_PREFIX = "NEXTWORD_"
# The model process is forked: on by default on Linux only, as macOS's system libraries are not
# safe to use in a forked child (and Windows has no fork).
MODEL_PROCESS_BY_DEFAULT = sys.platform.startswith("linux")

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class SettingsError(ValueError):
    """A setting that cannot be used; the message names its environment variable."""


class Settings(BaseSettings):
    """Everything the server can be told. Tests pass values directly: `Settings(port=0, ...)`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # --- which model ---
    model_store: Path = Path("model_store")
    model_name: str = "ptb"
    model_version: int | Literal["latest"] = "latest"
    # --- where to listen ---
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8000, ge=1, le=65535)
    # --- request limits: they bound the work and memory one request can cost ---
    # Characters of `text`; the forward pass costs one (hidden x hidden) step per word.
    max_text_chars: int = Field(default=10_000, ge=1, le=1_000_000)
    # Bytes of a request body, counted before JSON parsing (a JSON-escaped text is longer).
    max_body_bytes: int = Field(default=65_536, ge=1_024, le=64 * 1024 * 1024)
    # --- logging ---
    log_level: LogLevel = "info"
    # --- inference (app.inference.backend) ---
    # Texts kept with their hidden states, in each serving process: type-ahead then costs the
    # steps of the last word only. 0 turns the cache off.
    cache_size: int = Field(default=4096, ge=0, le=1_000_000)
    # Most concurrent requests computed as one batch (benchmarks/README.md: why 8).
    batch_max_size: int = Field(default=8, ge=1, le=1024)
    # How long a batch with company waits for more requests; a request alone never waits.
    batch_max_wait_ms: float = Field(default=0.0, ge=0, le=100)
    # Batches computed in a forked model process on another core (off: on the event loop;
    # for a server given one CPU, where a second process only adds the hand-over).
    model_process: bool = MODEL_PROCESS_BY_DEFAULT
    # --- model updates, overload, shutdown (app.serving, app.api.middleware) ---
    # A new version is loaded aside, checked with a probe prediction, then swapped in.
    reload_interval_s: float = Field(default=0, ge=0, le=86_400)
    # Above concurrency 128 a 2-core server only queues; refusing at once keeps latency bounded.
    max_in_flight: int = Field(default=128, ge=1, le=100_000)
    # A prediction takes milliseconds; one still unanswered after seconds is of no use to a
    # typing user, and holding it only adds to the queue.
    predict_timeout_s: float = Field(default=5.0, gt=0, le=600)
    # A body of at most NEXTWORD_MAX_BODY_BYTES takes milliseconds to send; a client still
    # sending after seconds is stuck or hostile (a slow upload held a slot of MAX_IN_FLIGHT).
    body_timeout_s: float = Field(default=5.0, gt=0, le=600)
    # How long an idle client connection is kept open. Longer than the idle time-outs of client
    # pools and load balancers (httpx 5 s, AWS ALB 60 s; nginx uses 75 s too): a server that
    # closes first races the client reusing the connection, which then sees a reset.
    keep_alive_s: int = Field(default=75, ge=1, le=3_600)
    # Inside the 10 s Docker waits before SIGKILL, and above the request time-out, so every
    # accepted request can finish.
    shutdown_timeout_s: float = Field(default=8.0, gt=0, le=3_600)
    # --- security (app.api.security) ---
    # SecretStr: the value never shows in a repr, a log line or a validation error.
    api_key: SecretStr | None = None
    admin_key: SecretStr | None = None
    # NoDecode: the variable is a comma-separated list, not JSON.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # --- what is never suggested (app.inference.blocklist) ---
    # The user's own words, added to the shipped list of offensive English words.
    blocklist: Path | None = None

    @field_validator("model_name")
    @classmethod
    def _name_is_one_folder(cls, value: str) -> str:
        return check_name(value)

    @field_validator("model_version", mode="before")
    @classmethod
    def _version_is_latest_or_number(cls, value: Any) -> Any:
        # Environment variables are strings: "3" means version 3; anything else but "latest"
        # (or a whole number from code) is refused here with one clear message.
        if isinstance(value, str):
            value = value.strip().lower()
            if value == "latest":
                return value
            if value.isdigit():
                value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"must be 'latest' or a version number of 1 or more, not {value!r}")
        return value

    @field_validator("api_key", "admin_key")
    @classmethod
    def _key_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # Refused rather than ignored: an empty or short key set by mistake must not leave the
        # server open or guessable.
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (or not set at all)")
        return value

    @field_validator("blocklist", mode="before")
    @classmethod
    def _blocklist_is_not_blank(cls, value: Any) -> Any:
        # A blank variable would be the path ".", a folder; refused rather than ignored, like a
        # blank key, as it was meant to name a file.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must name a file of words (or not be set at all)")
        return value

    @field_validator("blocklist")
    @classmethod
    def _blocklist_is_readable(cls, value: Path | None) -> Path | None:
        # Read here only to check it (the server reads it again to use it): a missing or
        # mis-encoded file then stops start-up with one line naming the variable.
        if value is not None:
            try:
                read_blocklist(value)
            except BlocklistError as error:
                raise ValueError(str(error)) from None
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @model_validator(mode="after")
    def _keys_differ(self) -> Settings:
        api, admin = self.api_key, self.admin_key
        if api and admin and api.get_secret_value() == admin.get_secret_value():
            raise ValueError("NEXTWORD_ADMIN_KEY must differ from NEXTWORD_API_KEY")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, then `overrides` (None means 'not given').

    Raises SettingsError with a one-line message naming the variable, for the command line.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "settings"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] != "value_error":  # our own validators already quote the value
            message += f", not {item['input']!r}"
        problems.append(f"{ENV_PREFIX}{field.upper()} ({field}): {message}")
    return "; ".join(problems)
