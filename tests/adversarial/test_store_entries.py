"""Model-store entries the server does not understand, and manifests and tokenizers whose JSON
is well-formed but holds the wrong kinds of values: each is ignored or refused with one line
naming the file, never a 500 nor a traceback."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from safetensors.numpy import save_file
from support.models import random_arrays
from support.server import REPO, free_port

from app import store
from app.api.app import create_app
from app.inference.loading import load_predictor
from app.settings import Settings
from app.store import ModelStoreError
from app.tokenizer import PRESETS, Tokenizer, TokenizerError

VOCAB, EMBED, HIDDEN = 24, 8, 8
ADMIN_KEY = "adversarial-admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}
# Names in a model's folder that are not versions. ² and ٣ are digits to str.isdigit(), and
# int() refuses ²; 01 is not how str(1) writes 1; 0 is below the first version.
ODD_FOLDERS = ["²", "٣", "01", "0", "abc", "v2", "1.0", " 3", "3 ", "99999999999", "a\nb"]
HIDDEN_FOLDERS = [".tmp-x", ".git"]


def publish_random(model_store: Path, name: str = "m", seed: int = 0) -> store.Published:
    """Publish a version with random weights, laid out as `nextword train` does (no training)."""
    words = ["<unk>", "<eos>", *(f"w{i}" for i in range(2, VOCAB))]

    def write(folder: Path) -> dict[str, Any]:
        save_file(random_arrays(VOCAB, EMBED, HIDDEN, seed=seed), str(folder / store.WEIGHTS))
        Tokenizer(PRESETS["raw"], words).save(folder / store.TOKENIZER)
        architecture = {
            "type": "simple_rnn", "vocab_size": VOCAB, "embedding_dim": EMBED,
            "hidden_units": HIDDEN, "tied": True,
        }  # fmt: skip
        return {"architecture": architecture, "metrics": {"perplexity": 1.0}}

    return store.publish(model_store, name, write)


def clutter(model_dir: Path) -> None:
    """Every kind of entry that is not a version, beside the real ones."""
    for name in ODD_FOLDERS + HIDDEN_FOLDERS:
        (model_dir / name).mkdir()
    (model_dir / "2").write_text("a file, not a folder\n", encoding="utf-8")
    (model_dir / "notes.txt").write_text("hello\n", encoding="utf-8")
    # A copy of version 1 under a name that is not a version must not be served either.
    copy = model_dir / "²" / store.MANIFEST
    copy.write_bytes((model_dir / "1" / store.MANIFEST).read_bytes())


@pytest.fixture
def cluttered(tmp_path: Path) -> Path:
    """A store whose model `m` has one good version, 1, among entries that are not versions."""
    model_store = tmp_path / "store"
    assert publish_random(model_store).version == 1
    clutter(model_store / "m")
    return model_store


# --- which entries are versions ----------------------------------------------------------------


def test_only_ascii_whole_numbers_that_are_folders_are_versions(cluttered: Path) -> None:
    assert store.versions(cluttered, "m") == [1]
    assert store.version_dir(cluttered, "m", "latest") == (cluttered / "m" / "1").resolve()
    expected = sorted([*ODD_FOLDERS, "2", "notes.txt"])
    assert store.unrecognised(cluttered, "m") == expected  # hidden work folders are expected
    # Publishing goes on from the real versions, past a name taken by a file.
    assert publish_random(cluttered).version == 3
    assert store.versions(cluttered, "m") == [1, 3]


@pytest.mark.parametrize("version", ["²", "01", "0", "-1", "abc", " 1", "1.0", "", "3000000000"])
def test_a_version_written_oddly_is_a_store_error(cluttered: Path, version: str) -> None:
    with pytest.raises(ModelStoreError) as caught:
        store.version_dir(cluttered, "m", version)
    assert "\n" not in str(caught.value)


def test_the_log_line_quotes_names_so_none_can_forge_a_line(tmp_path: Path) -> None:
    line = store.describe_unrecognised(tmp_path, ["a\nERROR: forged", "\x1b[31mred", "²"])
    assert "\n" not in line and "\x1b" not in line
    assert "'²'" in line
    many = store.describe_unrecognised(tmp_path, [f"x{i}" for i in range(25)])
    assert "and 15 more" in many


# --- a server over the cluttered store ------------------------------------------------------------


def _settings(model_store: Path, **more: Any) -> Settings:
    values: dict[str, Any] = dict(
        model_store=model_store, model_name="m", model_version="latest",
        admin_key=SecretStr(ADMIN_KEY), model_process=False,
    )  # fmt: skip
    return Settings(**{**values, **more})


def _served(client: TestClient) -> int:
    version: int = client.get("/models").json()["models"][0]["version"]
    return version


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "version",
    [None, "1", "2", "3", "0", "-1", "²", "01", "abc", "1.0", " 1", "", "99999999999", "1e3"],
)
def test_reload_never_answers_5xx(
    cluttered: Path, version: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(_settings(cluttered)), raise_server_exceptions=False) as client:
        assert _served(client) == 1
        params = {} if version is None else {"version": version}
        answer = client.post("/admin/reload", params=params, headers=ADMIN)
        assert answer.status_code < 500, answer.text
        assert answer.status_code in (200, 409, 422), answer.text
        assert "\n" not in answer.json().get("message", "")
        assert _served(client) == 1  # still serving version 1
    _no_traceback(caplog)


def test_odd_entries_are_reported_once_not_at_every_poll(
    cluttered: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _settings(cluttered, reload_interval_s=0.02)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        time.sleep(0.5)  # some 25 polls
        for _ in range(3):
            assert client.post("/admin/reload", headers=ADMIN).status_code == 200
        reported = [r for r in caplog.records if "not a version" in r.getMessage()]
        assert len(reported) == 1, caplog.text
        assert reported[0].levelno == logging.WARNING
        line = reported[0].getMessage()
        assert "'01'" in line and "'2'" in line and "'a\\nb'" in line and "and 3 more" in line
        assert ".tmp-x" not in line
        # A new odd entry is reported in its turn, alone.
        (cluttered / "m" / "v9").mkdir()
        assert client.post("/admin/reload", headers=ADMIN).status_code == 200
        reported = [r for r in caplog.records if "not a version" in r.getMessage()]
        assert len(reported) == 2 and "'v9'" in reported[1].getMessage()
        assert "'²'" not in reported[1].getMessage()
        assert _served(client) == 1
    _no_traceback(caplog)


def test_a_real_server_starts_on_the_good_version_and_says_so_once(
    cluttered: Path, tmp_path: Path
) -> None:
    command = [
        sys.executable, "-m", "app.cli", "serve", "--store", str(cluttered), "--name", "m",
        "--port", str(free_port()),
    ]  # fmt: skip
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "Application startup complete" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=15)
    output = log.read_text(errors="replace")
    assert "serving model m v1" in output
    assert output.count("not a version") == 1, output
    assert "Traceback" not in output


def test_a_store_of_odd_entries_only_stops_start_up_with_one_line(tmp_path: Path) -> None:
    model_dir = tmp_path / "store" / "m"
    model_dir.mkdir(parents=True)
    for name in ["²", "01", ".tmp-x"]:
        (model_dir / name).mkdir()
    command = [
        sys.executable, "-m", "app.cli", "serve", "--store", str(tmp_path / "store"),
        "--name", "m", "--port", str(free_port()),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert "cannot serve: no versions of model 'm'" in errors[0], errors


# --- manifests and tokenizers with the wrong kinds of values -----------------------------------

Change = Callable[[Any], Any]


def _set(key: str, value: Any) -> Change:
    def change(payload: Any) -> Any:
        payload[key] = value
        return payload

    return change


def _set_in(outer: str, key: str, value: Any) -> Change:
    def change(payload: Any) -> Any:
        payload[outer][key] = value
        return payload

    return change


def _sha_of(file_name: str, value: Any) -> Change:
    return _set_in("files", file_name, value)


# Stands for JSON nested 100,000 deep (which json.loads cannot read back: RecursionError).
DEEP = ["nested deep"]
DEEP_TEXT = "[" * 100_000 + "]" * 100_000

MANIFEST_FAULTS: dict[str, Change] = {
    "architecture a list": _set("architecture", [1, 2]),
    "architecture a string": _set("architecture", "simple_rnn"),
    "architecture null": _set("architecture", None),
    "vocab_size a list": _set_in("architecture", "vocab_size", [24]),
    "vocab_size a string": _set_in("architecture", "vocab_size", "many"),
    "vocab_size infinite": _set_in("architecture", "vocab_size", float("inf")),
    "vocab_size NaN": _set_in("architecture", "vocab_size", float("nan")),
    # Refused when the weights do not fit it: the message names the weights file.
    "vocab_size huge": _set_in("architecture", "vocab_size", 10**30),
    "vocab_size an object": _set_in("architecture", "vocab_size", {"n": 24}),
    "tied a string": _set_in("architecture", "tied", "yes"),
    "type a list": _set_in("architecture", "type", ["simple_rnn"]),
    "files a list": _set("files", [store.WEIGHTS, store.TOKENIZER]),
    "files a string": _set("files", "weights.safetensors"),
    "files without the weights": _set("files", {"x": 5}),
    "a sha256 a number": _sha_of(store.WEIGHTS, 5),
    "a sha256 null": _sha_of(store.TOKENIZER, None),
    "a sha256 an object": _sha_of(store.WEIGHTS, {"sha256": "0"}),
    "a file name with NUL": _sha_of("a\x00b", "0" * 64),
    "a file name that is a path": _sha_of("../../escape", "0" * 64),
    "a file name that is the folder": _sha_of(".", "0" * 64),
    "a file name empty": _sha_of("", "0" * 64),
    "format a string": _set("format", "1"),
    "format a list": _set("format", [1]),
    "the manifest a list": lambda payload: [payload],
    "the manifest a string": lambda payload: "manifest",
    "the manifest null": lambda payload: None,
    "the manifest nested deep": lambda payload: DEEP,
}

TOKENIZER_FAULTS: dict[str, Change] = {
    "config a string": _set("config", "string"),
    "config a list": _set("config", [1, 2]),
    "config null": _set("config", None),
    "config missing": lambda payload: {k: v for k, v in payload.items() if k != "config"},
    "config with an unknown setting": _set_in("config", "colour", "blue"),
    "lowercase a string": _set_in("config", "lowercase", "yes"),
    "lowercase a number": _set_in("config", "lowercase", 1),
    "number_token a list": _set_in("config", "number_token", ["N"]),
    "unknown_token a number": _set_in("config", "unknown_token", 5),
    "punctuation a list": _set_in("config", "punctuation", ["keep"]),
    "punctuation unknown": _set_in("config", "punctuation", "shout"),
    "vocabulary of numbers": _set("vocabulary", [1, 2, 3]),
    "vocabulary with a non-string word": lambda p: _set("vocabulary", [*p["vocabulary"], 7])(p),
    "vocabulary a string": _set("vocabulary", "<unk> <eos>"),
    "vocabulary an object": _set("vocabulary", {"<unk>": 0}),
    "vocabulary missing": lambda payload: {k: v for k, v in payload.items() if k != "vocabulary"},
    "vocabulary with duplicates": lambda p: _set("vocabulary", [*p["vocabulary"], "<eos>"])(p),
    "vocabulary empty": _set("vocabulary", []),
    "format null": _set("format", None),
    "the tokenizer a list": lambda payload: [payload],
    "the tokenizer a number": lambda payload: 1,
    "the tokenizer nested deep": lambda payload: DEEP,
}


def _rewrite(path: Path, change: Change) -> None:
    """Change a JSON file of a version and, for a file other than the manifest, record its new
    sha256 in the manifest as a careless hand edit would: the change is then what is refused."""
    payload = change(json.loads(path.read_text(encoding="utf-8")))
    text = DEEP_TEXT if payload is DEEP else json.dumps(payload)
    path.write_text(text, encoding="utf-8")
    if path.name != store.MANIFEST:
        manifest_path = path.parent / store.MANIFEST
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest["files"][path.name] = store.sha256_file(path)
        manifest_path.write_text(json.dumps(manifest), encoding="utf-8")


def _as_float(outer: str, key: str) -> Change:
    def change(payload: Any) -> Any:
        payload[outer][key] = float(payload[outer][key])  # 24 -> 24.0: equal, not an integer
        return payload

    return change


# Values Python takes for the right ones (True == 1 == 1.0; bool is an int), of the wrong JSON
# kind: each refused, naming the file and the field (the last item).
KIND_FAULTS: dict[str, tuple[str, Change, str]] = {
    "manifest format true": (store.MANIFEST, _set("format", True), "format"),
    "manifest format 1.0": (store.MANIFEST, _set("format", 1.0), "format"),
    "vocab_size true": (store.MANIFEST, _set_in("architecture", "vocab_size", True), "vocab_size"),
    "vocab_size 24.0": (store.MANIFEST, _as_float("architecture", "vocab_size"), "vocab_size"),
    "hidden_units a string of digits": (
        store.MANIFEST, _set_in("architecture", "hidden_units", "8"), "hidden_units"
    ),
    "embedding_dim false": (
        store.MANIFEST, _set_in("architecture", "embedding_dim", False), "embedding_dim"
    ),
    "tied 1": (store.MANIFEST, _set_in("architecture", "tied", 1), "tied"),
    "tokenizer format true": (store.TOKENIZER, _set("format", True), "format"),
    "tokenizer format 1.0": (store.TOKENIZER, _set("format", 1.0), "format"),
}  # fmt: skip

FAULTS = (
    [
        pytest.param(store.MANIFEST, change, id=f"manifest: {name}")
        for name, change in MANIFEST_FAULTS.items()
    ]
    + [
        pytest.param(store.TOKENIZER, change, id=f"tokenizer: {name}")
        for name, change in TOKENIZER_FAULTS.items()
    ]
    + [
        pytest.param(file_name, change, id=f"wrong kind: {name}")
        for name, (file_name, change, _) in KIND_FAULTS.items()
    ]
)


@pytest.mark.parametrize(("file_name", "change"), FAULTS)
def test_a_malformed_value_is_refused_in_one_line_naming_the_file(
    tmp_path: Path,
    file_name: str,
    change: Change,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    model_store = tmp_path / "store"
    publish_random(model_store, seed=1)
    publish_random(model_store, seed=2)
    _rewrite(model_store / "m" / "2" / file_name, change)
    with pytest.raises(ModelStoreError) as caught:
        load_predictor(model_store, "m", 2)
    message = str(caught.value)
    named = store.WEIGHTS if "vocab_size huge" in request.node.name else file_name
    assert "\n" not in message and named in message, message

    # At a running server: 409 naming the file, version 1 still served, no traceback.
    caplog.set_level(logging.DEBUG)
    settings = _settings(model_store, model_version=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answer = client.post("/admin/reload", params={"version": 2}, headers=ADMIN)
        assert answer.status_code == 409, answer.text
        assert named in answer.json()["message"]
        assert _served(client) == 1
    _no_traceback(caplog)
    refusals = [r for r in caplog.records if "refused model m v2" in r.getMessage()]
    assert len(refusals) == 1 and "\n" not in refusals[0].getMessage()


@pytest.mark.parametrize(
    ("file_name", "change", "field"), list(KIND_FAULTS.values()), ids=list(KIND_FAULTS)
)
def test_a_value_of_the_wrong_json_kind_is_refused_naming_its_field(
    tmp_path: Path, file_name: str, change: Change, field: str
) -> None:
    model_store = tmp_path / "store"
    publish_random(model_store, seed=1)
    _rewrite(model_store / "m" / "1" / file_name, change)
    with pytest.raises(ModelStoreError) as caught:
        load_predictor(model_store, "m", 1)
    message = str(caught.value)
    assert "\n" not in message and file_name in message and field in message, message


@pytest.mark.parametrize(("name", "change"), list(TOKENIZER_FAULTS.items()))
def test_from_json_raises_only_tokenizer_errors(name: str, change: Change) -> None:
    good = json.loads(Tokenizer(PRESETS["raw"], ["<unk>", "<eos>", "a"]).to_json())
    payload = change(good)
    text = DEEP_TEXT if payload is DEEP else json.dumps(payload)
    with pytest.raises(TokenizerError) as caught:
        Tokenizer.from_json(text)
    assert "\n" not in str(caught.value)
