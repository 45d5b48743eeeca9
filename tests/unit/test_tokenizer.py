"""Unit tests of the word-level tokenizer shared by training and serving."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.models import SHARED_DATA

from app.tokenizer import PRESETS, Tokenizer, TokenizerConfig, TokenizerError, standardise

PTB_LINES = [
    " aer banknote berlitz calloway centrust cluett fromstein gitano guterman hydro-quebec ",
    " pierre <unk> N years old will join the board as a nonexecutive director nov. N ",
    " mr. <unk> is chairman of <unk> n.v. the dutch publishing group ",
    " the 30-year bonds rose in the 1980s as mr. smith 's firm said ",
]


def test_ptb_form_comes_through_unchanged() -> None:
    for line in PTB_LINES:
        assert standardise(line, PRESETS["ptb"]) == line.split()


def test_wikitext_keeps_case_and_punctuation() -> None:
    line = " Senjō no Valkyria 3 : <unk> Chronicles ( Japanese , lit . ) 1 @,@ 000 "
    assert standardise(line, PRESETS["wikitext"]) == line.split()


def test_raw_preset_splits_punctuation_and_folds_numbers() -> None:
    words = standardise("The company's profit rose 5.5% to $1,000, Mr. Smith said.", PRESETS["raw"])
    assert words == [
        "the", "company's", "profit", "rose", "N", "to", "$", "N", ",",
        "mr", ".", "smith", "said", ".",
    ]  # fmt: skip


def test_strip_drops_marks_and_control_characters() -> None:
    config = TokenizerConfig(punctuation="strip", numbers="keep")
    assert standardise("Hello,\x00 world!\x07 (again)", config) == ["hello", "world", "again"]


def test_vocabulary_is_built_from_training_lines_with_limits() -> None:
    lines = ["b a a c", "a b d"]
    tokenizer = Tokenizer.build(lines, PRESETS["ptb"])
    assert tokenizer.vocabulary == ["<unk>", "<eos>", "a", "b", "c", "d"]
    capped = Tokenizer.build(lines, PRESETS["ptb"], max_size=4)
    assert capped.vocabulary == ["<unk>", "<eos>", "a", "b"]
    frequent = Tokenizer.build(lines, PRESETS["ptb"], min_count=2)
    assert frequent.vocabulary == ["<unk>", "<eos>", "a", "b"]


def test_unknown_words_and_sentence_end() -> None:
    tokenizer = Tokenizer.build(["the cat sat"], PRESETS["ptb"])
    assert tokenizer.words("the dog sat") == ["the", "<unk>", "sat"]
    assert tokenizer.encode("the dog sat", end_of_line=True) == [
        tokenizer.vocabulary.index("the"),
        Tokenizer.unknown_id,
        tokenizer.vocabulary.index("sat"),
        Tokenizer.end_id,
    ]
    the, cat = tokenizer.vocabulary.index("the"), tokenizer.vocabulary.index("cat")
    assert list(tokenizer.encode_lines(["the", "cat"])) == [the, 1, cat, 1]


def test_json_round_trip_is_bit_for_bit(tmp_path: Path) -> None:
    tokenizer = Tokenizer.build(["Zoë's café served 3 crêpes, then 12!"], PRESETS["raw"])
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.to_json() == path.read_text(encoding="utf-8")
    assert loaded == tokenizer
    text = "zoë's CAFÉ served 7 crêpes?"
    assert loaded.encode(text) == tokenizer.encode(text)


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        '{"format": 99, "config": {}, "vocabulary": []}',
        '{"format": 1, "config": {"punctuation": "odd"}, "vocabulary": ["<unk>", "<eos>"]}',
        '{"format": 1, "config": {}, "vocabulary": ["a", "b"]}',
        '{"format": 1, "config": {}, "vocabulary": ["<unk>", "<eos>", "a", "a"]}',
    ],
)
def test_bad_tokenizer_files_are_refused(payload: str) -> None:
    with pytest.raises(TokenizerError):
        Tokenizer.from_json(payload)


@pytest.mark.corpus
def test_shared_ptb_corpus_is_unchanged() -> None:
    path = SHARED_DATA / "ptb" / "valid.txt"
    if not path.exists():
        pytest.skip("../shared/data/ptb is not here")
    for line in path.read_text(encoding="utf-8").splitlines():
        assert standardise(line, PRESETS["ptb"]) == line.split()
