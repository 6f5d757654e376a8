"""Every read is bounded: bytes per file, archive member and object (before reading or decompressing),
no reads of devices or pipes, and timeouts on HTTP; each past a bound is one error row and the run
goes on with everything else."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import ConfigError, resolve
from pipeline.engine.store import Store

LIMIT = 200_000  # bytes: the good images are ~10 KB


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(out, "JPEG")
    return out.getvalue()


def config(**ingest):
    return resolve("tiny", {"ingest": {"max_file_bytes": LIMIT, **ingest}}, {"device": "cpu"})


def manifest(store: Store) -> pl.DataFrame:
    return pl.from_arrow(store.manifest.read())


def test_devices_and_oversized_files_archive_members_get_one_error_row_each_and_the_rest_is_ingested(tmp_path):
    folder, archives = tmp_path / "in", tmp_path / "archives"
    folder.mkdir()
    archives.mkdir()
    (folder / "good.jpg").write_bytes(jpeg(0))
    (folder / "huge.jpg").write_bytes(jpeg(1) + b"\0" * (LIMIT + 1))  # a valid JPEG, too many bytes
    with zipfile.ZipFile(archives / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ok.jpg", jpeg(2))
        z.writestr("zeros.jpg", b"\0" * (50 << 20))  # 50 MiB of zeros: ~50 KB compressed
    with tarfile.open(archives / "shard.tar", "w") as t:
        for name, data in (("a.jpg", jpeg(3)), ("big.jpg", b"\0" * (LIMIT + 10))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    listing = tmp_path / "list.csv"
    listing.write_text(f"path\n/dev/zero\n{folder / 'good.jpg'}\n")
    store = Store(tmp_path / "data")
    run_stage("ingest", config(), store, inputs=[folder, archives / "bomb.zip", archives / "shard.tar", listing])
    rows = manifest(store)
    by_path = {Path(r["path"].split("::")[-1]).name: r for r in rows.iter_rows(named=True)}
    assert by_path["good.jpg"]["status"] == by_path["ok.jpg"]["status"] == by_path["a.jpg"]["status"] == "ok"
    for name in ("huge.jpg", "zeros.jpg", "big.jpg"):
        assert (by_path[name]["status"], by_path[name]["error_kind"]) == ("error", "file_too_large"), name
        assert "ingest.max_file_bytes" in by_path[name]["error"]
    assert (by_path["zero"]["error_kind"], by_path["zero"]["status"]) == ("not_a_regular_file", "error")
    assert rows.height == 7  # one row per file and member; the listed good.jpg is the same bytes: one row


class Switchable(http.server.BaseHTTPRequestHandler):
    """Serves files from `root` until `hang` is set; then accepts and never answers."""

    root: Path
    hang = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        data = self._answer()
        if data is not None:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer()

    def _answer(self) -> bytes | None:
        """The status and headers for the file asked for, and its bytes; None once hanging."""
        if self.hang.is_set():
            time.sleep(120)
            return None
        data = (self.root / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return data

    def log_message(self, *args) -> None:
        pass


def test_a_server_that_stops_answering_gives_error_rows_within_the_timeout_not_a_hang(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    for k in range(3):
        (root / f"{k}.jpg").write_bytes(jpeg(10 + k))
    handler = type("Handler", (Switchable,), {"root": root, "hang": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        listing = tmp_path / "urls.csv"
        listing.write_text("path\n" + "".join(f"{url}/{k}.jpg\n" for k in range(3)))
        store = Store(tmp_path / "data")
        cfg = config(read_timeout=2)
        run_stage("ingest", cfg, store, inputs=[listing])
        assert (manifest(store)["status"] == "ok").all()
        handler.hang.set()
        start = time.monotonic()
        stats = run_stage("caption", cfg, store)
        assert time.monotonic() - start < 60
        assert (stats.ok, stats.error) == (0, 3)
        rows = pl.from_arrow(make_stage("caption", cfg, store).output.read())
        assert set(rows["error_kind"]) == {"read_timeout"}
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "bad", [{"max_file_bytes": 0}, {"max_file_bytes": 1.5}, {"read_timeout": 0}, {"read_timeout": float("inf")},
            {"read_timeout": float("nan")}, {"decode_timeout": float("inf")}, {"decode_timeout": -1}]
)
def test_read_limits_are_checked_when_the_config_is_read(bad):
    with pytest.raises(ConfigError, match=f"ingest.{next(iter(bad))}"):
        resolve("tiny", {"ingest": bad})
