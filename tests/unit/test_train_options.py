"""`nextword train --help` explains every option: a one-line help and a section for each flag
and each TrainConfig field, so a setting added without one is caught here."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from app.cli import build_parser, main
from app.training.config import TrainConfig
from app.training.options import GROUPS, OPTIONS


def _train_parser() -> argparse.ArgumentParser:
    commands = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    parser = commands.choices["train"]
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def test_every_setting_has_a_help_and_a_group() -> None:
    for item in fields(TrainConfig):
        assert item.name in OPTIONS, f"TrainConfig.{item.name} has no help in options.py"
    for name, (group, text) in OPTIONS.items():
        assert group in GROUPS, f"{name}: unknown group {group!r}"
        assert text.strip() and "\n" not in text, f"{name}: help must be one non-empty line"


def test_every_train_flag_is_helped_in_a_named_group() -> None:
    parser = _train_parser()
    groups = {group.title: group for group in parser._action_groups}
    assert list(GROUPS) == [title for title in groups if title in GROUPS]
    grouped = {id(action) for name in GROUPS for action in groups[name]._group_actions}
    flags = [action for action in parser._actions if action.dest != "help"]
    assert len(flags) == len(OPTIONS)
    for action in flags:
        label = action.option_strings[0] if action.option_strings else action.dest
        assert id(action) in grouped, f"{label} is in no group"
        assert action.help and not action.help.startswith("("), f"{label} has no help"


def test_help_lists_the_groups_and_says_what_bptt_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name, about in GROUPS.items():
        assert f"{name}: {about}" in text
    assert "--bptt BPTT steps of backpropagation through time: tokens a training window" in text
    assert "(default 35)" in text


def test_flags_still_parse_as_settings() -> None:
    args = _train_parser().parse_args(["corpus.txt", "--bptt", "7", "--tied", "no", "--quiet"])
    assert (args.train_file, args.bptt, args.tied, args.quiet) == ("corpus.txt", 7, False, True)
    assert args.epochs is None  # not given: a recipe's value stands
