"""A hub model's revision, resolved to the commit it names, for fingerprints and loading alike.

`revision: null` means "the hub's main branch today": recorded as is, a hub update would change the
features under an unchanged fingerprint. So a hub id's revision (a branch, a tag, or none) is
resolved to its commit: first from the local Hugging Face cache (the `refs/<revision>` file a
download leaves, so an offline cluster resolves it too), else from the hub when it is allowed and
reachable. The backends load exactly that commit. Local directories and `tiny/...` models have no
revision; an unresolvable one (offline and not cached) stays as given, and loading then fails with
its own clear line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMMIT = re.compile(r"[0-9a-f]{40}")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class HubModel:
    """Mixin of a frozen config dataclass with `model` and `revision` fields: its identity and what
    workers are sent carry the commit the revision resolves to here."""

    model: str
    revision: str | None

    def identity(self) -> dict[str, Any]:
        """As configured, with a hub model's revision resolved to its commit."""
        from pipeline.engine.config import identity_of  # config imports this module

        return {**identity_of(self), "revision": self.commit()}

    def pinned(self) -> Any:
        """This config with the revision resolved (what a worker is sent)."""
        return dataclasses.replace(self, revision=self.commit())

    def commit(self) -> str | None:
        return resolve_revision(self.model, self.revision)


def is_hub_id(model: str) -> bool:
    """`org/name` that is not a local directory and not one of our tiny builds."""
    return bool(HUB_ID.fullmatch(model)) and not model.startswith("tiny/") and not Path(model).exists()


def resolve_revision(model: str, revision: str | None) -> str | None:
    """The commit `revision` (None: main) of hub model `model`, or `revision` itself when there is
    nothing to resolve or no way to."""
    if revision is not None and COMMIT.fullmatch(revision):
        return revision
    if not is_hub_id(model):
        return revision
    return _resolved(model, revision, hub_cache_dir())


def hub_cache_dir() -> str:
    """Where huggingface_hub keeps downloads, by its own rules (HF_HUB_CACHE, the legacy
    HUGGINGFACE_HUB_CACHE, HF_HOME, XDG_CACHE_HOME), read now: the library reads them once, at import.
    The backends load from this directory too, so the commit recorded and the files loaded agree."""

    def expand(path: str) -> str:
        return os.path.expandvars(os.path.expanduser(path))

    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = expand(os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface"))
    return expand(
        os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    )


@lru_cache(maxsize=64)
def _resolved(model: str, revision: str | None, cache_dir: str) -> str | None:
    ref = Path(cache_dir) / f"models--{model.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        commit = ref.read_text().strip()
        if COMMIT.fullmatch(commit):
            return commit
    except OSError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return revision
    try:
        from huggingface_hub import HfApi

        commit = HfApi().model_info(model, revision=revision, timeout=5).sha
    except Exception as e:  # unreachable, unknown or gated: loading says so in its own words
        log.debug("cannot resolve %s@%s on the hub: %s", model, revision or "main", e)
        return revision
    if not commit or not COMMIT.fullmatch(commit):
        return revision
    _record_ref(ref, commit)
    return commit


def _record_ref(ref: Path, commit: str) -> None:
    """Write `refs/<revision>` as a download by branch name would. The backends download by commit,
    which leaves no ref: without this, the next run offline could not resolve the revision (a new
    fingerprint) nor load it (the hub client finds a branch's files only through its ref)."""
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        tmp.replace(ref)  # atomic: a concurrent reader never sees half a commit
    except OSError as e:  # a read-only cache: this run is right, a later offline one asks again
        log.debug("cannot record %s in %s: %s", commit, ref, e)
