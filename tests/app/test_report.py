"""The HTML report renders in headless Chromium with every image loaded and no console message, and
shows what the terminal tables show (`n (real/fake)`, †) and a legend for its cards.

Chromium comes from Debian's `chromium` package: .ci/run installs it, and this test installs it
when missing and it can; it skips only when Chromium cannot be had.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.app.report import build
from pipeline.app.runner import compare
from pipeline.engine.store import Store
from tests.conftest import tiny

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--log-level=0",
    "--virtual-time-budget=10000",
]
CHECK = (
    "<script>window.addEventListener('load',()=>{const i=[...document.images];"
    "document.body.setAttribute('data-check',i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length);"
    "});</script>"
)


def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=600)
    return shutil.which("chromium") or pytest.skip("Chromium is not installed and cannot be installed here")


def render(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM after load (with the image check) and the console lines Chromium logged."""
    checked = tmp_path / f"checked-{page.name}"
    checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    out = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", checked.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout, [line for line in out.stderr.splitlines() if ":CONSOLE" in line]


def test_report_renders_with_every_image_and_no_console_message(full_run, tmp_path):
    shutil.copytree(full_run.root, tmp_path / "data")
    store = Store(tmp_path / "data")
    compare(["item", "unifd", "cosine", "format"], tiny(), store)
    page = build(tiny(), store, sample=6)
    text = page.read_text()
    assert 'src="http' not in text and "src='http" not in text  # self-contained: nothing fetched
    for section in ("Evaluation", "Baselines on the same cache", "Plots", "Format bias", "Explanations"):
        assert f"<h2>{section}</h2>" in text
    dom, console = render(page, tmp_path)
    match = re.search(r'data-check="(\d+)/(\d+)"', dom)
    assert match, dom[-500:]
    loaded, total = map(int, match.groups())
    assert total == text.count("<img ") >= 3 + text.count("class='card'")  # plots + explained images
    assert text.count("class='card'") >= 2 and loaded == total  # every test image of this small set
    assert console == []
    # the tables as the terminal prints them, the cards' legend and choice, pooled vs mean AP: in the page shown
    assert dom.count("<td>n (real/fake)</td>") >= 5 and "How these were chosen" in dom and "true label" in dom
    assert "pool every test image" in dom and "mean over the generators" in dom


def test_the_console_check_catches_a_message(full_run, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<html><body><img src='missing.png'><script>console.error('boom')</script></body></html>")
    dom, console = render(page, tmp_path)
    assert 'data-check="0/1"' in dom and any("boom" in line for line in console)
