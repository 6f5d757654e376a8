"""What the report and the tables hold, without a browser: Fig. 9's t-SNE per generator panel, and
names with Markdown or HTML characters kept in their cells (every row as many cells as the header)."""

from __future__ import annotations

import csv
import io
import re
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.app.report import build, markdown_html, markdown_row
from pipeline.engine.store import Store
from pipeline.method.evaluation import tsne_panels
from pipeline.method.metrics import table
from pipeline.method.rows import labelled_rows, latest_model
from pipeline.method.tables import compared, render_table
from tests.conftest import tiny

ODD = "a|b<c>"  # a generator name holding a Markdown cell end and HTML tag characters
SHOWN = "a|b&lt;c&gt;"  # ... as the HTML must show it


def html_rows(page: str) -> list[list[int]]:
    """Per HTML table, the number of cells of each of its rows."""
    tables = re.findall(r"<table>(.*?)</table>", page, re.S)
    return [[len(re.findall(r"<t[hd]>", row)) for row in re.findall(r"<tr>(.*?)</tr>", t, re.S)] for t in tables]


def markdown_rows(markdown: str) -> list[list[str]]:
    return [markdown_row(line) for line in markdown.splitlines() if line.startswith("|")]


def group(n_real: int, n_fake: int, value: float) -> dict:
    return {"acc": value, "ap": value, "n": n_real + n_fake, "n_fake": n_fake, "n_real": n_real}


def test_a_name_with_markdown_and_html_characters_stays_in_its_cell():
    results = [
        {
            "model": "head|1 *x*",
            "generators": {ODD: group(20, 20, 0.9), "toy,gan": group(3, 3, 0.5)},
            "all": group(23, 23, 0.8),
        }
    ]
    markdown = table(results, "acc")
    rows = markdown_rows(markdown)
    assert [len(r) for r in rows] == [4] * len(rows)  # header, |---|, the head, n (real/fake)
    assert rows[0] == ["method", ODD, "toy,gan", "mean"] and rows[2][0] == "head|1 *x*"
    page = markdown_html(markdown)
    assert f"<th>{SHOWN}</th>" in page and "<c>" not in page
    assert html_rows(page) == [[4, 4, 4]]
    lines = list(csv.reader(io.StringIO(table(results, "acc", markdown=False))))
    assert lines[0] == ["method", ODD, "toy,gan", "mean"] and [len(line) for line in lines] == [4, 4]
    paper = compared({}, lambda column: (None, "not given"))[0]
    paper["columns"][0]["column"] = ODD
    rows = markdown_rows(render_table(paper))
    assert rows[0][1] == ODD and len({len(r) for r in rows}) == 1


def test_the_report_draws_one_tsne_per_fig9_panel(full_run, tmp_path):
    shutil.copytree(full_run.root, tmp_path / "data")
    store = Store(tmp_path / "data")
    page = build(tiny(), store, sample=2).read_text()
    head_fp = _distance_fp(store)
    panels = tsne_panels(labelled_rows(store, head_fp))
    assert list(panels) == ["all", "toydiff", "toygan"]  # no Fig. 9 generator here: the data's own
    alts = re.findall(r'alt="t-SNE of D: ([^"]*)"', page)
    assert alts == ["every generator pooled", "toydiff", "toygan"]
    assert page.count("<figure class='tsne'>") == len(panels)
    figures = sorted(p.name for p in (store.reports / "figures").glob("tsne*.png"))
    assert figures == ["tsne-1-toydiff.png", "tsne-2-toygan.png", "tsne.png"]


def test_the_report_escapes_a_generator_named_with_markdown_and_html_characters(full_run, tmp_path):
    shutil.copytree(full_run.root, tmp_path / "data")
    store = Store(tmp_path / "data")
    for part in store.manifest.parts():  # the toygan images renamed, as an ingest --generator would
        rows = pq.read_table(part)
        at = rows.schema.get_field_index("generator")
        renamed = pc.replace_substring(rows.column("generator"), "toygan", ODD)
        pq.write_table(rows.set_column(at, rows.schema.field(at), renamed.cast(pa.string())), part)
    page = build(tiny(), store, sample=2).read_text()
    assert SHOWN in page and ODD not in page and "<c>" not in page
    assert f'alt="t-SNE of D: {SHOWN}"' in page
    for cells in html_rows(page):
        assert len(set(cells)) == 1, cells  # no row shifted
    for md in store.reports.glob("*.md"):
        rows = markdown_rows(md.read_text())
        assert len({len(r) for r in rows}) == 1, md
        assert ODD in rows[0], md


def _distance_fp(store: Store) -> str:
    from pipeline.method.heads import FittedHead

    return FittedHead(latest_model(store)).config["features"]["fingerprint"]
