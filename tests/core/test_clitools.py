"""Flags made from a typed config: every field a flag of the right type, explained, validated by the model."""
from __future__ import annotations

import argparse

import pytest

from cellgap.core.clitools import OneLineParser, add_model_flags, model_overrides


def test_train_flags_come_from_the_config_with_their_types_and_help():
    from cellgap.decoder.cli import TRAIN_FLAGS
    from cellgap.decoder.training.config import TrainConfig

    parser = OneLineParser(prog="train")
    add_model_flags(parser, TrainConfig, TRAIN_FLAGS)
    args = parser.parse_args(["--epochs", "3", "--lr", "0.01", "--postprocess", "conic", "--tune-postprocess", "no",
                              "--out", "runs/a", "--store", "s.zarr"])
    overrides = model_overrides(args, TRAIN_FLAGS)
    assert overrides == {"epochs": 3, "lr": 0.01, "postprocess": "conic", "tune_postprocess": False,
                         "out": overrides["out"], "store": "s.zarr"}
    config = TrainConfig(**overrides)
    assert (config.epochs, config.postprocess, str(config.out)) == (3, "conic", "runs/a")
    with pytest.raises(SystemExit):
        parser.parse_args(["--postprocess", "pannukee"])  # a Literal field offers its values as choices
    for action in parser._actions[1:]:
        assert action.help and action.help != action.dest, action.dest


def _commands(parser, prefix=()):
    """(name, parser) of every command and subcommand, `bench train` included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


def test_every_flag_of_every_command_has_help_text():
    from cellgap.cli import build_parser

    silent = {" ".join(name): [a.option_strings[0] for a in sub._actions if a.option_strings and not a.help]
              for name, sub in _commands(build_parser())}
    assert not {name: flags for name, flags in silent.items() if flags}


def test_evaluate_help_names_every_format_it_reads():
    from cellgap.featurestore.datasets import LABEL_FORMATS
    from cellgap.metrics.cli import LABEL_FORMAT_HELP

    assert tuple(sorted(LABEL_FORMAT_HELP)) == tuple(sorted(LABEL_FORMATS))


def test_at_least_can_bound_from_above():
    from cellgap.core.clitools import at_least

    parse = at_least(32, 2048)
    assert parse("2048") == 2048
    for text in ("31", "2049", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_yaml_files_fail_in_one_line_naming_the_place(tmp_path):
    from cellgap.core.configfile import read_yaml
    from cellgap.core.errors import CellgapError

    path = tmp_path / "c.yaml"
    path.write_text("a: 1\nb: {c: [1, 2\n")
    with pytest.raises(CellgapError, match=r"c.yaml: not valid YAML \(.* at line 3, column 1\)$") as raised:
        read_yaml(path, "config", CellgapError)
    assert "\n" not in str(raised.value)
    path.write_bytes(b"a: 1\nb: \xff\n")
    with pytest.raises(CellgapError, match=r"not UTF-8 text \(byte 0xff at line 2\)"):
        read_yaml(path, "config", CellgapError)
    with pytest.raises(CellgapError, match="cannot read the config"):
        read_yaml(tmp_path / "missing.yaml", "config", CellgapError)
    path.write_text("a: 1\nb: [2]\n")
    assert read_yaml(path, "config", CellgapError) == {"a": 1, "b": [2]}
