"""Unit tests of the blocklist (app.inference.blocklist) and its setting, NEXTWORD_BLOCKLIST."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.models import REPO
from support.server import free_port

from app.inference import blocklist as blocklist_module
from app.inference.blocklist import (
    DEFAULT_BLOCKLIST,
    MAX_BLOCKLIST_BYTES,
    Blocklist,
    BlocklistError,
    load_blocklist,
    read_blocklist,
)
from app.settings import SettingsError, load_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "words.txt"
    path.write_text(text, encoding="utf-8")
    return path


# --- reading a file ------------------------------------------------------------------------------


def test_one_entry_a_line_comments_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = _write(tmp_path, "# my words\n\n  spam  \nEggs\n   # indented comment\n\t\nham\n")
    assert read_blocklist(path) == Blocklist(frozenset({"spam", "eggs", "ham"}))


def test_entries_of_several_words_are_phrases_split_on_any_whitespace(tmp_path: Path) -> None:
    path = _write(tmp_path, "Ball  Gag\nrosy\tpalm and her 5 sisters\nspam\n")
    blocklist = read_blocklist(path)
    assert blocklist.words == {"spam"}
    assert blocklist.phrases == {("ball", "gag"), ("rosy", "palm", "and", "her", "5", "sisters")}
    assert len(blocklist) == 3


def test_a_byte_order_mark_and_windows_line_ends_are_not_part_of_an_entry(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_bytes("\ufeffspam\r\neggs\r\n".encode())
    assert read_blocklist(path).words == {"spam", "eggs"}


def test_an_empty_file_blocks_nothing(tmp_path: Path) -> None:
    blocklist = read_blocklist(_write(tmp_path, "# nothing yet\n"))
    assert len(blocklist) == 0
    assert not blocklist.blocks_phrase(["any", "words"])


# --- matching ------------------------------------------------------------------------------------


def test_words_match_in_any_case_and_either_unicode_form() -> None:
    blocklist = Blocklist.from_entries(["Spam", "café", "straße"])
    for word in ["spam", "SPAM", "Spam", "café", "CAFE\u0301", "STRASSE", "Straße"]:
        assert blocklist.blocks_word(word), word
    for word in ["spa", "spams", "cafe", "", "spam eggs"]:
        assert not blocklist.blocks_word(word), word


def test_a_phrase_is_blocked_only_as_a_contiguous_run() -> None:
    blocklist = Blocklist.from_entries(["ball gag", "two girls one cup"])
    assert blocklist.blocks_phrase(["a", "Ball", "GAG"])
    assert blocklist.blocks_phrase(["two", "girls", "one", "cup", "of", "tea"])
    assert not blocklist.blocks_phrase(["ball"])
    assert not blocklist.blocks_phrase(["gag", "ball"])
    assert not blocklist.blocks_phrase(["ball", "and", "gag"])
    assert not blocklist.blocks_phrase(["two", "girls", "one"])
    assert not blocklist.blocks_phrase([])
    # A phrase is not a single word: "ball gag" as one string is no entry of `words`.
    assert not blocklist.blocks_word("ball gag")


def test_any_blocked_word_blocks_a_phrase() -> None:
    blocklist = Blocklist.from_entries(["spam"])
    assert blocklist.blocks_phrase(["eggs", "and", "Spam"])
    assert not blocklist.blocks_phrase(["eggs", "and", "ham"])


def test_union_holds_the_entries_of_both() -> None:
    first = Blocklist.from_entries(["spam", "ball gag"])
    second = Blocklist.from_entries(["eggs", "spam"])
    both = first.union(second)
    assert both.words == {"spam", "eggs"} and both.phrases == {("ball", "gag")}
    assert len(both) == 3
    assert both.blocks_phrase(["ball", "gag"]) and both.blocks_word("EGGS")


# --- files that cannot be used -------------------------------------------------------------------


def _error(path: Path) -> str:
    with pytest.raises(BlocklistError) as caught:
        read_blocklist(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nope.txt")


def test_a_directory_is_an_error(tmp_path: Path) -> None:
    assert "is a directory" in _error(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_an_error_not_a_wait(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    assert "not a regular file" in _error(pipe)


def test_a_file_not_in_utf8_is_an_error_giving_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("spam\ncaf\u00e9\n".encode("latin-1"))
    assert "is not UTF-8 text (byte 8 cannot be decoded)" in _error(path)


def test_a_file_over_10_mb_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    # One comment line of exactly the limit is read; one byte more is refused.
    path.write_bytes(b"#" * (MAX_BLOCKLIST_BYTES - 1) + b"\n")
    assert len(read_blocklist(path)) == 0
    path.write_bytes(b"#" * MAX_BLOCKLIST_BYTES + b"\n")
    assert "larger than 10 MB" in _error(path)


def test_an_unreadable_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "spam\n")

    # chmod 000 does not stop root (tests may run as root in a container): refuse the open.
    def refuse(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    assert "cannot be read (Permission denied)" in _error(path)


# --- the shipped list ----------------------------------------------------------------------------


def test_the_shipped_list_blocks_offensive_words_and_not_ordinary_ones() -> None:
    blocklist = load_blocklist()
    assert blocklist == read_blocklist(DEFAULT_BLOCKLIST)
    assert len(blocklist.words) > 200 and len(blocklist.phrases) > 50
    for word in ["fuck", "Fuck", "SHIT", "bastard", "asshole"]:
        assert blocklist.blocks_word(word), word
    # Whole words only: "anal" is listed, "analysis" is not.
    for word in ["the", "company", "analysis", "bank", "N", "<unk>", "<eos>"]:
        assert not blocklist.blocks_word(word), word
    assert blocklist.blocks_phrase(["a", "ball", "gag"])
    assert not blocklist.blocks_phrase(["the", "ball", "game"])


def test_the_shipped_list_names_its_source_and_licence() -> None:
    header = DEFAULT_BLOCKLIST.read_text(encoding="utf-8").split("\n\n", 1)[0]
    for needed in ["naughty-words 1.2.0", "LDNOOBW", "CC BY 4.0", "Shutterstock"]:
        assert needed in header, needed


def test_a_users_file_adds_to_the_shipped_list(tmp_path: Path) -> None:
    blocklist = load_blocklist(_write(tmp_path, "spam\nvery bad phrase\n"))
    assert blocklist.blocks_word("Spam") and blocklist.blocks_word("fuck")
    assert blocklist.blocks_phrase(["a", "very", "bad", "phrase"])


def test_load_blocklist_reads_the_shipped_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocklist_module, "DEFAULT_BLOCKLIST", Path("/nonexistent/list.txt"))
    with pytest.raises(BlocklistError, match="does not exist"):
        load_blocklist()


# --- the setting ---------------------------------------------------------------------------------


def test_the_setting_accepts_a_readable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEXTWORD_BLOCKLIST", raising=False)
    path = _write(tmp_path, "spam\n")
    assert load_settings(blocklist=path).blocklist == path
    assert load_settings().blocklist is None


@pytest.mark.parametrize("value", ["", "   "])
def test_a_blank_setting_is_refused_not_ignored(value: str) -> None:
    with pytest.raises(SettingsError, match=r"NEXTWORD_BLOCKLIST .* must name a file"):
        load_settings(blocklist=value)


def _serve(tmp_path: Path, blocklist: Path) -> subprocess.CompletedProcess[str]:
    # Other NEXTWORD_* variables of the caller's shell must not change the outcome.
    environment = {key: value for key, value in os.environ.items() if key[:9] != "NEXTWORD_"}
    environment["NEXTWORD_BLOCKLIST"] = str(blocklist)
    # An empty store: should the setting wrongly pass, start-up still fails rather than serving.
    command = [
        sys.executable, "-m", "app.cli", "serve", "--store", str(tmp_path / "no-store"),
        "--port", str(free_port()),
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("problem", ["missing", "not UTF-8"])
def test_a_bad_blocklist_stops_serve_with_one_line(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "words.txt"
    if problem == "not UTF-8":
        path.write_bytes(b"spam\n\xff\xfe\n")
    result = _serve(tmp_path, path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nextword: error: NEXTWORD_BLOCKLIST (blocklist): blocklist ")
    assert str(path) in lines[0]
    assert ("does not exist" if problem == "missing" else "not UTF-8") in lines[0]
