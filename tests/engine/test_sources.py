"""Where datasets live: a webdataset tar shard, a zip of a CNNDetection tree, a Hugging Face Parquet
with an `image` column, and an S3 bucket (a local moto server started here, no network) each ingest
with labels, one row per image and the same image_ids as the loose files, and the model stages read
the bytes back from there. Broken containers give one error row or one clear line each."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine import locations
from pipeline.engine.errors import UsageError
from pipeline.engine.store import Store
from tests.conftest import tiny


def png(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# the dataset: (generator folder, label folder, name, bytes); two generators, reals and fakes
FILES = [
    (gen, cls, f"{i}.png", png(10 * g + 2 * i + c))
    for g, gen in enumerate(("progan", "sd"))
    for c, cls in enumerate(("0_real", "1_fake"))
    for i in range(2)
]


@pytest.fixture(scope="module")
def loose(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loose") / "cnn"
    for gen, cls, name, data in FILES:
        (root / gen / cls).mkdir(parents=True, exist_ok=True)
        (root / gen / cls / name).write_bytes(data)
    return root


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, broken_member: bool = False) -> Path:
    """A webdataset shard: key.png and key.json (label, generator) per sample."""
    with tarfile.open(path, "w") as tar:
        for k, (gen, cls, _, data) in enumerate(FILES):
            add(tar, f"{k:06d}.png", data)
            add(tar, f"{k:06d}.json", json.dumps({"label": int(cls[0]), "generator": gen}).encode())
        if broken_member:
            add(tar, "999999.png", b"\x89PNG\r\n\x1a\n not really a png")
    return path


def manifest(store: Store) -> pl.DataFrame:
    return pl.read_parquet(store.manifest.path / "part-*.parquet").sort("image_id")


def ingest(tmp_path: Path, name: str, *inputs) -> Store:
    store = Store(tmp_path / name)
    run_stage("ingest", tiny(), store, inputs=list(inputs))
    return store


def assert_like_loose(store: Store, reference: pl.DataFrame) -> None:
    m = manifest(store)
    assert m["image_id"].to_list() == reference["image_id"].to_list()  # one row each, same ids
    assert m["label"].to_list() == reference["label"].to_list()
    assert m["generator"].to_list() == reference["generator"].to_list()
    for stage in ("caption", "ground", "embed"):  # the bytes are read back from the container
        stats = run_stage(stage, tiny(), store)
        assert (stats.ok, stats.error) == (len(FILES), 0), (stage, stats.errors)


def test_tar_zip_parquet_and_loose_files_are_the_same_images(tmp_path, loose):
    reference = manifest(ingest(tmp_path, "loose", loose))
    assert reference.height == len(FILES) and set(reference["label"].to_list()) == {0, 1}

    shard = write_shard(tmp_path / "00000.tar")
    store = ingest(tmp_path, "tar", shard)
    assert manifest(store)["path"].str.contains(".tar::").all()
    assert_like_loose(store, reference)

    with zipfile.ZipFile(tmp_path / "cnn.zip", "w") as z:
        for gen, cls, name, data in FILES:
            z.writestr(f"{gen}/{cls}/{name}", data)
    assert_like_loose(ingest(tmp_path, "zip", tmp_path / "cnn.zip"), reference)

    table = pa.table(
        {
            "image": [{"bytes": data, "path": name} for _, _, name, data in FILES],
            "label": [int(cls[0]) for _, cls, _, _ in FILES],
            "generator": [gen for gen, _, _, _ in FILES],
        }
    )
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet", row_group_size=3)
    store = ingest(tmp_path, "hf", tmp_path / "train-00000-of-00001.parquet")
    assert set(manifest(store)["split"].to_list()) == {"train"}  # HF's file naming gives the split
    assert_like_loose(store, reference)

    mixed = ingest(tmp_path, "all", loose, shard, tmp_path / "cnn.zip")  # the same bytes three ways
    assert manifest(mixed).height == len(FILES)


def test_a_folder_of_shards_and_a_broken_member_or_shard(tmp_path, caplog):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "00000.tar", broken_member=True)
    whole = (shards / "00000.tar").read_bytes()
    (shards / "00001.tar").write_bytes(whole[: len(whole) // 2])  # truncated mid-shard
    (shards / "00002.tar").write_bytes(b"not a tar at all" * 100)
    store = ingest(tmp_path, "d", shards)
    m = pl.from_arrow(store.manifest.read())
    errors = m.filter(pl.col("status") == "error")
    assert errors.height >= 1 and errors.filter(pl.col("path").str.ends_with("999999.png")).height == 1
    assert m.filter(pl.col("status") == "ok").height == len(FILES)  # the truncated shard's are duplicates
    assert any("00002.tar" in message for message in caplog.messages)  # the unreadable shard: one line


def test_a_parquet_row_without_bytes_is_one_error_row(tmp_path):
    table = pa.table({"image": [{"bytes": png(1), "path": "a"}, {"bytes": None, "path": "b"}], "label": [0, 1]})
    pq.write_table(table, tmp_path / "test-00000.parquet")
    store = ingest(tmp_path, "d", tmp_path / "test-00000.parquet")
    m = pl.from_arrow(store.manifest.read()).sort("path")
    assert m["status"].to_list() == ["ok", "error"] and "no bytes" in m["error"][1]
    assert set(m["split"].to_list()) == {"test"}


def test_one_open_per_container_for_a_batch(tmp_path):
    shard = write_shard(tmp_path / "s.tar")
    members = [f"{shard}::{k:06d}.png" for k in range(len(FILES))]
    datas = locations.read_many([*members, f"{shard}::missing.png"])
    assert [d for d in datas[:-1]] == [data for _, _, _, data in FILES]
    assert isinstance(datas[-1], locations.LocationError) and "missing.png" in str(datas[-1])


@pytest.fixture
def s3(monkeypatch):
    """A local S3-compatible server (moto), as s3fs's own tests use; credentials from the environment."""
    moto_server = pytest.importorskip("moto.server")
    fsspec = pytest.importorskip("fsspec")
    pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": endpoint,  # for spawned decoding workers: fsspec reads it at import
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.makedirs("bucket", exist_ok=True)  # moto keeps its buckets for the process, across servers
    yield fs
    server.stop()


def test_images_in_an_s3_bucket(tmp_path, loose, s3):
    for gen, cls, name, data in FILES:
        s3.pipe(f"bucket/cnn/{gen}/{cls}/{name}", data)
    reference = manifest(ingest(tmp_path, "loose", loose))
    store = ingest(tmp_path, "s3", "s3://bucket/cnn/")
    assert manifest(store)["path"].str.starts_with("s3://bucket/cnn/").all()
    assert_like_loose(store, reference)
    assert run_stage("ingest", tiny(), store, inputs=["s3://bucket/cnn/"]).todo == 0  # unchanged: skipped
    with pytest.raises(UsageError, match="s3://no-such-bucket/"):
        run_stage("ingest", tiny(), store, inputs=["s3://no-such-bucket/imgs/"])


def test_fingerprints_do_not_depend_on_where_the_bytes_are(tmp_path, loose):
    shard = write_shard(tmp_path / "00000.tar")
    a, b = ingest(tmp_path, "a", loose), ingest(tmp_path, "b", shard)
    assert make_stage("caption", tiny(), a).fingerprint == make_stage("caption", tiny(), b).fingerprint


def test_loose_objects_are_read_together_in_order_with_failures_in_place(s3):
    """A batch of loose S3 objects is one fsspec `cat` of many paths (concurrent on async stores): the
    bytes come back in the order asked, a missing object as FileNotFoundError in its place."""
    from pipeline.engine import locations

    blobs = {f"s3://bucket/loose/{k}.png": png(k) for k in range(6)}
    for url, data in blobs.items():
        s3.pipe(url.removeprefix("s3://"), data)
    asked = [*reversed(blobs), "s3://bucket/loose/missing.png", "s3://bucket/loose/0.png"]
    got = locations.read_many(asked)
    assert got[:6] == [blobs[u] for u in reversed(blobs)] and got[7] == blobs["s3://bucket/loose/0.png"]
    assert isinstance(got[6], FileNotFoundError)
