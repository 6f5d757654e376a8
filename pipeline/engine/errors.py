"""Errors a user can act on, and errors as data.

`UsageError`: a problem with the user's command, data or configuration; the CLI prints it as one
line (the traceback only with -v). Any other exception is a bug and keeps its traceback.

`RowError`: a failure that belongs on one image's row. Its `kind` is machine-readable and is stored
in the row's `error_kind` column, with the stage it arose in in `error_stage`; resume decisions,
status counts and downstream error rows read those columns. The `error` column is a message for
people only (`KINDS` words it): rewording a message changes no behaviour.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class UsageError(ValueError):
    """A problem with the user's input, data or configuration that one line can explain and fix."""


# Error kinds and the words a message starts with. Code compares kinds, never these words.
KINDS: dict[str, str] = {
    "empty_file": "empty file (0 bytes)",
    "not_an_image": "not an image",
    "unsupported_format": "unsupported format",
    "decompression_bomb": "decompression bomb",
    "corrupt_image": "corrupt or truncated image",
    "invalid_dimensions": "invalid dimensions",
    "file_missing": "cannot read file",
    "unreadable_file": "cannot read file",
    "file_changed": "file changed since ingest",
    "bad_file_name": "file name is not valid UTF-8",
    "file_too_large": "file too large",
    "not_a_regular_file": "not a regular file",
    "read_timeout": "read timed out",
    "decode_timeout": "decode timed out",
    "decoder_crashed": "decoder crashed",
    "model_error": "model error",
    "no_output": "no output",
    "missing_input": "no input row",
    "unknown": "error",
}

# Kinds whose cause can go away without the user asking for a retry: the file at the manifest's
# path is back, or holds the image's bytes again (see engine/resume.py).
READ_FAILURES = frozenset({"file_missing", "file_changed", "read_timeout"})


class RowError(Exception):
    """A per-row failure: `kind` (a key of KINDS) for code, the message for people.

    Args:
        kind: what went wrong, machine-readable.
        detail: the specifics (an exception's text, a path), shown after the kind's words.
    """

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail

    def __str__(self) -> str:
        return message(self.kind, self.detail)


def message(kind: str, detail: str = "") -> str:
    """The readable text of an error of `kind`."""
    words = KINDS.get(kind, kind)
    return f"{words}: {detail}" if detail else words


def error_fields(error: RowError | str, kind: str | None = None, stage: str | None = None) -> dict[str, Any]:
    """The error columns of a row (`status` included) for a RowError, or a message with its kind."""
    if isinstance(error, RowError):
        text, kind = str(error), error.kind
    else:
        text = error
    return {"status": "error", "error": text, "error_kind": kind or "unknown", "error_stage": stage}


def tally(statuses: list[str], kinds: list[str | None], stages: list[str | None], own: str) -> dict[str, int]:
    """Error rows counted by `label` (what `status` and a run's summary print)."""
    rows = zip(statuses, kinds, stages, strict=True)
    return dict(Counter(label(kind, stage, own) for status, kind, stage in rows if status == "error"))


def label(kind: str | None, stage: str | None, own: str | None = None) -> str:
    """How status and run summaries name a group of errors: the kind's words, after the stage they
    came from when that is not the stage reporting them."""
    words = KINDS.get(kind or "unknown", kind or "unknown")
    return words if stage in (None, own) else f"{stage}: {words}"


# --- parts written before errors were data ------------------------------------------------------
# Rows written before the error columns existed carry only the message. Their kind and stage are
# read once, here, from the message's fixed wording of that time (these strings are frozen: they
# describe files already on disk, not what the code writes today), so no cached row is recomputed.
_LEGACY_STAGES = frozenset({"ingest", "caption", "ground", "embed", "distance"})
_LEGACY_PREFIXES = (
    ("empty file", "empty_file"),
    ("not an image", "not_an_image"),
    ("unsupported format", "unsupported_format"),
    ("decompression bomb", "decompression_bomb"),
    ("corrupt or truncated image", "corrupt_image"),
    ("invalid dimensions", "invalid_dimensions"),
    ("cannot read file: FileNotFoundError", "file_missing"),
    ("cannot read file", "unreadable_file"),
    ("file changed since ingest", "file_changed"),
    ("file name is not valid UTF-8", "bad_file_name"),
    ("decode timed out", "decode_timeout"),
    ("decoder crashed", "decoder_crashed"),
    ("model error", "model_error"),
    ("no caption", "no_output"),
)


def legacy_kind(error: str | None) -> tuple[str | None, str | None]:
    """(error_kind, error_stage) of a row written before the error columns (None, None for ok rows)."""
    if error is None:
        return None, None
    stage = None
    head, sep, rest = error.partition(":")
    if sep and head in _LEGACY_STAGES:
        stage, error = head, rest.strip()
    kind = next((k for prefix, k in _LEGACY_PREFIXES if error.startswith(prefix)), "unknown")
    return kind, stage
