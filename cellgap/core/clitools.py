"""Small helpers every package's command-line module shares (argument types, the parser class).

The command line reports user errors as one line on stderr with exit code 2; argparse's own usage
errors follow the same rule through `OneLineParser`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import UnionType
from typing import Any, Literal, NoReturn, Union, get_args, get_origin

from pydantic import BaseModel


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """`--device`, the same on every command that runs a model."""
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N (default auto)")


def parse_bool(text: str) -> bool:
    """Parse true/false style flags (`--pretrained false`)."""
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def positive_int(text: str) -> int:
    """Parse an integer that must be at least 1."""
    return at_least(1)(text)


def at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: parse an integer that must be at least `minimum` (and at most `maximum`, if given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"expected a number <= {maximum}, got {value}")
        return value

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def unit_interval(text: str) -> float:
    """Parse a number in [0, 1] (a probability or a score threshold)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def positive_float(text: str) -> float:
    """Parse a finite number that must be above 0."""
    value = _number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _choices(annotation: Any) -> tuple[str, ...] | None:
    """The values of a Literal annotation (unions of Literals and None included), else None."""
    if get_origin(annotation) is Literal:
        return tuple(str(value) for value in get_args(annotation))
    if get_origin(annotation) in (Union, UnionType):
        parts = [_choices(arg) for arg in get_args(annotation) if arg is not type(None)]
        if parts and all(parts):
            return tuple(value for part in parts if part for value in part)
    return None


def _scalar(annotation: Any) -> Any:
    """`int | None` -> int: the one non-None type of an optional annotation."""
    if get_origin(annotation) in (Union, UnionType):
        kinds = [arg for arg in get_args(annotation) if arg is not type(None)]
        return kinds[0] if len(kinds) == 1 else str
    return annotation


_METAVARS: dict[Any, str] = {int: "N", float: "X", str: "TEXT", Path: "PATH"}


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], names: Sequence[str]) -> None:
    """One flag per field (`batch_size` -> `--batch-size`), typed and explained by the field itself, so that
    the command line and the YAML config cannot drift. Unset flags stay None and leave the field to the
    config file or its default; the model validates the values."""
    for name in names:
        field = model.model_fields[name]
        value = None if field.is_required() else field.get_default(call_default_factory=True)
        default = "" if value is None else f" (default {str(value).lower() if isinstance(value, bool) else value})"
        options: dict[str, Any] = {"dest": name, "default": None, "help": f"{field.description or name}{default}"}
        choices, kind = _choices(field.annotation), _scalar(field.annotation)
        if choices:
            options["choices"] = choices
        elif kind is bool:
            options.update(type=parse_bool, metavar="true|false")
        else:
            kind = kind if kind in _METAVARS else str
            options.update(type=kind, metavar=_METAVARS[kind])
        parser.add_argument("--" + name.replace("_", "-"), **options)


def model_overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The flags of `add_model_flags` that were given, by field name."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}
