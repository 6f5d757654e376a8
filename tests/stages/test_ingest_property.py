"""Property: whatever the input tree — names with `::`, dots, `%`, unicode and bytes that are not
UTF-8, nested and symlinked label folders, tar and zip members, lists with relative and absolute
paths and repeated rows — every reachable image gets exactly one manifest row, with its own bytes'
id and the label its path implies (a loose file whose name is not UTF-8: one error row saying so).

`make test` tries a few trees; `make soak` (ITEM_SOAK_TREES) many more."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.app.runner import run_stage
from pipeline.engine import locations
from pipeline.engine.store import Store
from tests.conftest import tiny

TREES = int(os.environ.get("ITEM_SOAK_TREES", "12"))
NAMES = ["a.png", "a.jpg", "a.png::b.png", "x.tar.png", "dots.2023.01.png", "dots.2023.02.png", "%41.png",
         "caf\u00e9.png", "sp ace.png", "caf\udce9.png"]  # the last: the byte 0xE9 alone, not UTF-8
# (a.png, a.jpg, a.png::b.png and the dots share a webdataset key: each is still its own image)
FOLDERS = ["", "0_real", "1_fake", "sub/1_fake", "deep/er/0_real"]
KINDS = ["dir", "tar", "zip", "list", "linked"]

entry = st.tuples(st.sampled_from(KINDS), st.sampled_from(FOLDERS), st.sampled_from(NAMES))


def image(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def implied_label(folder: str) -> int | None:
    parts = folder.split("/")
    return 0 if "0_real" in parts else 1 if "1_fake" in parts else None


def utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def build(root: Path, entries: list[tuple[str, str, str]], absolute: bool, repeat: bool):
    """The tree on disk, the inputs to ingest, and what the manifest must hold: {image_id: label}
    for images, and the loose files whose names cannot be stored."""
    expected: dict[str, int | None] = {}
    bad_names = 0
    taken: set[tuple[str, str, str]] = set()
    tree, outside = root / "tree", root / "elsewhere"
    tar_members: list[tuple[str, bytes]] = []
    zip_members: list[tuple[str, bytes]] = []
    rows: list[str] = []
    for seed, (kind, folder, name) in enumerate(entries):
        if (kind, folder, name) in taken or (kind in ("zip", "list") and not utf8(name)):
            continue  # one file per place (zip names and UTF-8 lists are always text)
        taken.add((kind, folder, name))
        data = image(seed)
        member = f"{folder}/{name}" if folder else name
        if kind in ("dir", "linked", "list"):
            base = {"dir": tree, "linked": outside / "real", "list": root / "listed"}[kind]
            path = base / member
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if kind == "list":
                rel = os.path.relpath(path, root)
                label = implied_label(folder)
                rows.append(f"{path if absolute else rel},{'' if label is None else label}")
                if repeat:
                    rows.append(rows[-1])
            if kind == "linked":
                member = f"linked/{member}"  # seen through tree/linked -> elsewhere/real
        elif kind == "tar":
            tar_members.append((member, data))
        else:
            zip_members.append((member, data))
        if kind in ("dir", "linked") and not utf8(name):
            bad_names += 1
            continue
        expected[hashlib.sha256(data).hexdigest()] = implied_label(member.rsplit("/", 1)[0] if "/" in member else "")
    tree.mkdir(parents=True, exist_ok=True)
    if (outside / "real").is_dir():
        (tree / "linked").symlink_to(outside / "real", target_is_directory=True)
        (outside / "real" / "loop").symlink_to(tree, target_is_directory=True)  # a way back: no loop
    inputs = [tree]
    if tar_members:
        with tarfile.open(root / "shard.tar", "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                          errors="surrogateescape") as t:
            for member, data in tar_members:
                add(t, member, data)
        inputs.append(root / "shard.tar")
    if zip_members:
        with zipfile.ZipFile(root / "pack.zip", "w") as z:
            for member, data in zip_members:
                z.writestr(member, data)
        inputs.append(root / "pack.zip")
    if rows:
        (root / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
        inputs.append(root / "list.csv")
    return inputs, expected, bad_names


@settings(max_examples=TREES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# the reported cases, always tried: images of one shard key; a symlinked label folder; a name with ::
@example(entries=[("tar", "", "a.png"), ("tar", "", "a.jpg"), ("tar", "1_fake", "dots.2023.01.png"),
                  ("tar", "1_fake", "dots.2023.02.png")], absolute=False, repeat=False)
@example(entries=[("linked", "0_real", "a.png"), ("dir", "1_fake", "a.png")], absolute=False, repeat=True)
@example(entries=[("dir", "", "a.png"), ("dir", "", "a.png::b.png"), ("list", "1_fake", "a.png::b.png"),
                  ("tar", "", "caf\udce9.png"), ("dir", "0_real", "caf\udce9.png")], absolute=False, repeat=True)
@given(entries=st.lists(entry, min_size=1, max_size=12), absolute=st.booleans(), repeat=st.booleans())
def test_every_reachable_image_gets_exactly_one_row_with_its_own_bytes_and_implied_label(entries, absolute, repeat):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs, expected, bad_names = build(root, entries, absolute, repeat)
        cwd = os.getcwd()
        os.chdir(root)  # relative list rows resolve against the list, not the working directory
        try:
            store = Store(root / "data")
            run_stage("ingest", tiny(), store, inputs=inputs)
            again = run_stage("ingest", tiny(), store, inputs=inputs)
        finally:
            os.chdir(cwd)
        manifest = pl.from_arrow(store.manifest.read())
        ok = manifest.filter(pl.col("status") == "ok")
        assert ok["image_id"].n_unique() == ok.height  # one row per image
        assert dict(zip(ok["image_id"], ok["label"], strict=True)) == expected  # every image, its label
        for location, image_id in zip(ok["path"], ok["image_id"], strict=True):
            assert hashlib.sha256(locations.read(location)).hexdigest() == image_id  # its own bytes
        errors = manifest.filter(pl.col("status") == "error")
        assert errors.height == bad_names and set(errors["error_kind"]) <= {"bad_file_name"}
        assert again.todo == bad_names  # nothing else read again
        if manifest.height:
            assert pl.read_parquet(store.root / "manifest").height == manifest.height  # a plain scan too
