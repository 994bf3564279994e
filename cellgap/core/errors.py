"""The root of every user error in cellgap: the command line reports it as one line, the service as a 4xx.

Each package derives its own errors from `CellgapError` and from the builtin a caller would
naturally catch (ValueError, FileNotFoundError, ...), so outside code need not import cellgap.
"""
from __future__ import annotations


class CellgapError(Exception):
    """A problem with the user's input or environment: reported as one line, never a traceback."""
