"""Server settings: one object, read from `NEXTWORD_*` environment variables (or given in code).

    NEXTWORD_MODEL_STORE     folder of models, `<store>/<name>/<version>/`   (model_store)
    NEXTWORD_MODELS          models to serve, comma-separated      (every model of the store)
    NEXTWORD_MODEL_NAME      the default model, for a request naming none  (ptb, or the first)
    NEXTWORD_MODEL_VERSION   the default model's version, or `latest`; the others: latest
    NEXTWORD_HOST            address to listen on                             (127.0.0.1)
    NEXTWORD_PORT            port to listen on                                (8000)
    NEXTWORD_MAX_TEXT_CHARS  longest `text` accepted by POST /predict         (10000)
    NEXTWORD_MAX_BODY_BYTES  largest request body accepted                    (65536)
    NEXTWORD_LOG_LEVEL       critical | error | warning | info | debug        (info)
    NEXTWORD_LOG_FORMAT      text | json (one JSON object a line)             (text)
    NEXTWORD_RELOAD_INTERVAL_S   seconds between looks for a new version; 0 = never   (0)
    NEXTWORD_MAX_IN_FLIGHT       requests worked on at once; past it 503 + Retry-After (128)
    NEXTWORD_PREDICT_TIMEOUT_S   longest wait for a prediction; past it 504            (5)
    NEXTWORD_HEADER_TIMEOUT_S    longest wait for a request's headers; past it 408     (10)
    NEXTWORD_BODY_TIMEOUT_S      longest wait for a request's whole body; past it 408  (5)
    NEXTWORD_MAX_CONNECTIONS     open connections; past it the longest idle is closed  (1024)
    NEXTWORD_KEEP_ALIVE_S        how long an idle connection stays open                (75)
    NEXTWORD_SHUTDOWN_TIMEOUT_S  longest wait for requests in flight on SIGTERM        (8)
    NEXTWORD_API_KEY         key required on /predict and /models (X-API-Key or Bearer)  (none)
    NEXTWORD_ADMIN_KEY       key for /admin/*; unset, the admin routes do not exist      (none)
    NEXTWORD_METRICS_KEY     key for GET /metrics; unset, it is open like /health       (none)
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

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app import store
from app.inference.blocklist import BlocklistError, read_blocklist
from app.store import ModelStoreError, check_name

ENV_PREFIX = "NEXTWORD_"
DEFAULT_STORE = Path("model_store")
DEFAULT_MODEL = "ptb"
# The model process is forked: on by default on Linux only, as macOS's system libraries are not
# safe to use in a forked child (and Windows has no fork).
MODEL_PROCESS_BY_DEFAULT = sys.platform.startswith("linux")

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class SettingsError(ValueError):
    """A setting that cannot be used; the message names its environment variable."""


class Settings(BaseSettings):
    """Everything the server can be told. Tests pass values directly: `Settings(port=0, ...)`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # --- which models (see _choose_models for what is served when they are not given) ---
    model_store: Path = DEFAULT_STORE
    # The default model: the one a request that names none gets.
    model_name: str = DEFAULT_MODEL
    # Served side by side, each with its own manager and model process. NoDecode: the variable
    # is a comma-separated list, not JSON.
    models: Annotated[tuple[str, ...], NoDecode] = ()
    # The default model's; the others serve their latest version (a pin is per model, and one
    # variable cannot say which).
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
    log_format: Literal["text", "json"] = "text"  # json: for log collectors (app.logs)
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
    # A prediction takes milliseconds; one unanswered after seconds is of no use to a typist.
    predict_timeout_s: float = Field(default=5.0, gt=0, le=600)
    # Headers and a body take milliseconds to send; a client still sending after seconds is
    # stuck or hostile, and holds a connection (app.api.connections, app.api.deadlines).
    header_timeout_s: float = Field(default=10.0, gt=0, le=600)
    body_timeout_s: float = Field(default=5.0, gt=0, le=600)
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)  # (a file descriptor each)
    # An idle connection's life: longer than client pools' and load balancers' (httpx 5 s, AWS
    # ALB 60 s; nginx 75 s too), or the client reusing it races the server closing it.
    keep_alive_s: int = Field(default=75, ge=1, le=3_600)
    # Inside Docker's 10 s before SIGKILL, above the request time-out: accepted requests finish.
    shutdown_timeout_s: float = Field(default=8.0, gt=0, le=3_600)
    # --- security (app.api.security) ---
    # SecretStr: the value never shows in a repr, a log line or a validation error.
    api_key: SecretStr | None = None
    admin_key: SecretStr | None = None
    metrics_key: SecretStr | None = None  # (app.api.metrics) unset: /metrics is open
    # NoDecode: the variable is a comma-separated list, not JSON.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # --- what is never suggested (app.inference.blocklist) ---
    # The user's own words, added to the shipped list of offensive English words.
    blocklist: Path | None = None

    @field_validator("model_name")
    @classmethod
    def _name_is_one_folder(cls, value: str) -> str:
        return check_name(value)

    @model_validator(mode="before")
    @classmethod
    def _choose_models(cls, values: Any) -> Any:
        """NEXTWORD_MODELS and NEXTWORD_MODEL_NAME when not given, which depend on each other
        and on the store's folders (no field default can): the models are every model of the
        store with a version, and the default model even if it has none (its load then says
        why, as for a server of one model); the default model is `ptb` when served, else the
        first served. Raw values: the field validators check them after."""
        if not isinstance(values, dict):
            return values
        listed, name = _split_names(values.get("models")), values.get("model_name")
        if listed is None:
            return values  # not a list: the field validator says so
        if listed:
            chosen = name if name is not None else _default_among(listed)
            return {**values, "models": listed, "model_name": chosen}
        folder = values.get("model_store", DEFAULT_STORE)
        found = _models_in(Path(folder)) if isinstance(folder, str | os.PathLike) else []
        chosen = name if name is not None else _default_among(found)
        served = found if chosen in found else [chosen, *found]
        return {**values, "models": served, "model_name": chosen}

    @field_validator("models")
    @classmethod
    def _models_are_in_the_store(
        cls, value: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(check_name(name) for name in value))  # twice: served once
        if "model_store" not in info.data or "model_name" not in info.data:
            return names  # refused already
        folder, default = info.data["model_store"], info.data["model_name"]
        if default not in names:
            raise ValueError(
                f"does not list the default model {default!r} (NEXTWORD_MODEL_NAME): add it, "
                f"or set NEXTWORD_MODEL_NAME to one of {', '.join(names)}"
            )
        # The default model is looked for when it loads, with the message a server of one model
        # gives (how to train it); another one missing is a mistake in this list.
        for name in names:
            if name != default and not (folder / name).is_dir():
                found = ", ".join(_models_in(folder)) or "none"
                raise ValueError(f"no model {name!r} in {folder} (it has: {found})")
        return names

    @field_validator("model_version", mode="before")
    @classmethod
    def _version_is_latest_or_number(cls, value: Any) -> Any:
        # A variable is a string: "3" is version 3; all but "latest" or a number is refused.
        if isinstance(value, str):
            value = value.strip().lower()
            if value == "latest":
                return value
            if value.isascii() and value.isdigit():  # not "²", a digit int() cannot read
                value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"must be 'latest' or a version number of 1 or more, not {value!r}")
        return value

    @field_validator("api_key", "admin_key", "metrics_key")
    @classmethod
    def _key_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # Refused rather than ignored: an empty or short key set by mistake must not leave the
        # server open or guessable.
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (or not set at all)")
        return value

    @field_validator("blocklist", mode="before")
    @classmethod
    def _blocklist_is_readable(cls, value: Any) -> Any:
        # A blank variable would be the path ".", a folder: refused like a blank key. The file
        # is read here only to check it (the server reads it again to use it): a missing or
        # mis-encoded file stops start-up with one line naming the variable.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must name a file of words (or not be set at all)")
        if isinstance(value, str | os.PathLike):
            try:
                read_blocklist(Path(value))
            except BlocklistError as error:
                raise ValueError(str(error)) from None
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        return _split_names(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _keys_differ(self) -> Settings:
        admin = self.admin_key.get_secret_value() if self.admin_key else None
        for name, key in (("API", self.api_key), ("METRICS", self.metrics_key)):
            if admin and key and key.get_secret_value() == admin:  # (they may not swap models)
                raise ValueError(f"NEXTWORD_ADMIN_KEY must differ from NEXTWORD_{name}_KEY")
        return self

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case_level(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    def for_model(self, name: str) -> Settings:
        """The settings of one served model's manager: `model_name` is that model, and
        `model_version` NEXTWORD_MODEL_VERSION for the default model, `latest` for the others."""
        version = self.model_version if name == self.model_name else "latest"
        return self.model_copy(update={"model_name": name, "model_version": version})


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
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] != "value_error":  # our own validators already quote the value
            message += f", not {item['input']!r}"
        # A check of several settings at once has no field: its message names the variables.
        problems.append(f"{ENV_PREFIX}{field.upper()} ({field}): {message}" if field else message)
    return "; ".join(problems)


def _split_names(value: Any) -> list[str] | None:
    """A comma-separated variable as a list ([] when not given or blank); None if not a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return list(value) if isinstance(value, list | tuple) else None


def _default_among(names: list[str]) -> str:
    # A name that is not one is refused in NEXTWORD_MODELS alone, not as the default too.
    valid = [name for name in names if isinstance(name, str) and store.is_model_name(name)]
    return DEFAULT_MODEL if DEFAULT_MODEL in valid or not valid else valid[0]


def _models_in(folder: Path) -> list[str]:
    """The store's models that have a version, sorted (a model being trained for the first time
    has none yet: it is served once the server is restarted)."""
    try:
        entries = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    except OSError:
        return []  # no store: the default model's load says so
    found = []
    for name in [entry for entry in entries if store.is_model_name(entry)]:  # not `.tmp-*`
        try:
            if store.versions(folder, name):
                found.append(name)
        except ModelStoreError:  # a folder the server may not list: its load says why
            found.append(name)
    return found
