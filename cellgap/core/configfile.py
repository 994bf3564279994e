"""Reading a YAML settings file into plain values, every failure one line that names the file and the place."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cellgap.core.errors import CellgapError


def one_line(text: object) -> str:
    """Collapse a message to one line (the command line reports errors on exactly one line)."""
    return " ".join(str(text).split())


def read_yaml(path: Path, what: str, error: type[CellgapError]) -> Any:
    """The values of a YAML file; an unreadable file, text that is not UTF-8 or a syntax error raise `error` with
    one line (the YAML problem with its line and column, not PyYAML's several-line excerpt)."""
    import yaml

    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as problem:
        raise error(f"{path}: cannot read the {what} ({problem.strerror or problem})") from None
    except UnicodeDecodeError as problem:
        line = problem.object[: problem.start].count(b"\n") + 1
        raise error(f"{path}: the {what} is not UTF-8 text (byte 0x{problem.object[problem.start]:02x} "
                    f"at line {line})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        message = getattr(problem, "problem", None) or one_line(problem)
        raise error(f"{path}: not valid YAML ({one_line(message)}{where})") from None
