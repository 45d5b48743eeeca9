"""The training job end to end on a tiny corpus: it learns, saves, reloads and refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.models import TinyModel, patterned_lines, train_tiny

from app import store
from app.cli import main
from app.tokenizer import PRESETS, Tokenizer

pytestmark = pytest.mark.slow


def _manifest(model: TinyModel) -> dict[str, Any]:
    return json.loads((model.path / store.MANIFEST).read_text())


def test_tiny_model_learns_far_below_the_unigram_baseline(tiny_model: TinyModel) -> None:
    valid = _manifest(tiny_model)["metrics"]["valid"]
    # The corpus is made of 4 slots with 4-6 choices each: a model that learned the pattern is
    # near perplexity ~5; the unigram model of the same words is above 15.
    assert valid["perplexity"] < valid["unigram_perplexity"] / 2
    assert valid["top5"] > 0.8


def test_manifest_describes_the_model(tiny_model: TinyModel) -> None:
    manifest = _manifest(tiny_model)
    assert manifest["format"] == store.MANIFEST_FORMAT
    assert manifest["architecture"]["hidden_units"] == 16
    assert set(manifest["files"]) >= {store.WEIGHTS, store.TOKENIZER, store.KERAS_MODEL}
    assert manifest["metrics"]["test"]["perplexity"] > 1
    assert manifest["training"]["tokens_per_second"] > 0
    assert manifest["libraries"]["tensorflow"]
    store.read_manifest(tiny_model.path)  # every sha256 matches


def test_saved_tokenizer_is_the_one_built_from_the_training_split(
    tiny_model: TinyModel, corpus_file: Path
) -> None:
    lines = corpus_file.read_text().splitlines()
    train_lines = lines[: len(lines) - 2 * round(len(lines) * 0.05)]
    rebuilt = Tokenizer.build(train_lines, PRESETS["raw"], max_size=10_000)
    saved = Tokenizer.load(tiny_model.path / store.TOKENIZER)
    assert saved.to_json() == rebuilt.to_json()
    sample = "The Cat sees a dragon, at night!"
    assert saved.encode(sample) == rebuilt.encode(sample)


def test_saved_keras_model_reloads_with_identical_predictions(tiny_model: TinyModel) -> None:
    import keras

    import app.training.model as model_module

    loaded = keras.saving.load_model(tiny_model.path / store.KERAS_MODEL)
    weights = store.load_weights(tiny_model.path)
    config = model_module.ModelConfig(vocab_size=weights["embedding"].shape[0], hidden_units=16,
                                      embedding_dim=16, tied=True)  # fmt: skip
    rebuilt = model_module.build_model(config)
    rebuilt.set_weights(loaded.get_weights())
    tokens = np.array([[1, 5, 7, 9, 3]], dtype=np.int32)
    state = np.zeros((1, 16), dtype=np.float32)
    first, _ = loaded([tokens, state])
    second, _ = rebuilt([tokens, state])
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    exported = model_module.export_weights(loaded, config)
    assert exported.keys() == weights.keys()
    for key in weights:
        np.testing.assert_array_equal(exported[key], weights[key])


def test_evaluate_command_reproduces_the_manifest(
    tiny_model: TinyModel, corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = corpus_file.read_text().splitlines()
    test_file = tmp_path / "test.txt"
    test_file.write_text("\n".join(lines[-round(len(lines) * 0.05) :]) + "\n")
    code = main(["evaluate", str(test_file), "--store", str(tiny_model.store), "--name", "tiny"])
    assert code == 0
    expected = _manifest(tiny_model)["metrics"]["test"]["perplexity"]
    assert f"perplexity {expected:.2f}" in capsys.readouterr().out


def test_versions_count_up(tiny_model: TinyModel, corpus_file: Path) -> None:
    again = train_tiny(corpus_file, tiny_model.store, epochs=1)
    assert again.version == tiny_model.version + 1
    assert store.versions(tiny_model.store, "tiny")[-1] == again.version


# --- bad input: one line on stderr, exit status 2, nothing written -----------------------------


def _bad_run(args: list[str], store_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["train", *args, "--store", str(store_dir), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("nextword: error: ") and error.count("\n") == 1, error
    assert not store_dir.exists() or not any(store_dir.rglob("*")), "something was written"
    return error


def test_missing_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = _bad_run([str(tmp_path / "nope.txt")], tmp_path / "store", capsys)
    assert "does not exist" in error


def test_empty_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert "is empty" in _bad_run([str(empty)], tmp_path / "store", capsys)


def test_corpus_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    assert "not UTF-8" in _bad_run([str(latin)], tmp_path / "store", capsys)


def test_corpus_too_small_for_one_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "small.txt"
    small.write_text("\n".join(patterned_lines(60)) + "\n")
    error = _bad_run([str(small), "--batch-size", "64", "--bptt", "35"], tmp_path / "s", capsys)
    assert "one batch needs" in error


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--hidden-units", "0", "hidden_units"),
        ("--dropout", "1.5", "dropout"),
        ("--learning-rate", "-1", "learning_rate"),
        ("--optimizer", "rmsprop", "optimizer"),
        ("--preset", "klingon", "preset"),
    ],
)
def test_nonsense_settings(
    flag: str, value: str, named: str, corpus_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert named in _bad_run([str(corpus_file), flag, value], tmp_path / "store", capsys)


@pytest.mark.parametrize(("flag", "value"), [("--epochs", "many"), ("--tied", "maybe")])
def test_values_of_the_wrong_type(
    flag: str, value: str, corpus_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(corpus_file), flag, value])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.startswith("nextword: error: ") and error.count("\n") == 1
    assert flag in error


def test_output_name_that_escapes_the_store(
    corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = _bad_run([str(corpus_file), "--name", "../../etc"], tmp_path / "store", capsys)
    assert "not allowed" in error
    assert not (tmp_path / "etc").exists()


def test_unwritable_store_fails_before_training(
    corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["train", str(corpus_file), "--store", str(blocker / "store"), "--quiet"])
    assert code == 2
    assert "cannot write to" in capsys.readouterr().err
