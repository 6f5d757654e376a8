"""Errors a user can act on. The CLI prints these as one line (the traceback only with -v); any
other exception is a bug and keeps its traceback."""

from __future__ import annotations


class UsageError(ValueError):
    """A problem with the user's input, data or configuration that one line can explain and fix."""
