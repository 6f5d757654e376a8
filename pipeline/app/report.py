"""`item report`: one self-contained HTML page (images inlined) with the evaluation tables, the
baseline comparison, the robustness grid, the plots, the format-bias check and per-image
explanations for a sample of test images (thumbnail with the grounded boxes, caption, score and
each object's image-phrase cosine)."""

from __future__ import annotations

import base64
import html
import io
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import ImageDraw

from pipeline.engine.config import PipelineConfig
from pipeline.engine.store import Store

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}.warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em}
.note{color:#666;font-size:.9em}.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1em}
.card{border:1px solid #ddd;padding:.6em;border-radius:6px}.card img{width:100%}.fake{color:#b00}.real{color:#070}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:1em}.panels figure{margin:0}
.panels img{width:100%}
"""


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode()}"


def img_tag(path_or_bytes: Path | bytes, alt: str) -> str:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    mime = "image/jpeg" if data[:2] == b"\xff\xd8" else "image/png"
    return f'<img src="{data_uri(data, mime)}" alt="{html.escape(alt)}">'


def table_html(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_html(markdown: str) -> str:
    """A table of `pipeline.method.metrics.table` (what the terminal prints: the `n (real/fake)` row,
    cells marked †) as HTML, its footnote as a note below it."""
    lines = markdown.splitlines()
    rows = [markdown_row(line) for line in lines if line.startswith("|")]
    notes = [line.strip() for line in lines if line.strip() and not line.startswith(("|", "#"))]
    body = [r for r in rows[1:] if not all(set(c) <= set("-:") for c in r)]  # the |---| line left out
    note = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
    return table_html(body, rows[0]) + note if rows else note


def markdown_row(line: str) -> list[str]:
    """The cells of one Markdown table row, as text: split at the pipes that are not backslash-escaped,
    each escape read as the character it keeps (metrics.markdown_cell's inverse)."""
    cells, cell, chars = [], [], iter(line.strip())
    for c in chars:
        if c == "\\":
            cell.append(next(chars, "\\"))
        elif c == "|":
            cells.append("".join(cell).strip())
            cell = []
        else:
            cell.append(c)
    cells.append("".join(cell).strip())
    return cells[1:-1] if len(cells) > 1 else cells  # the text before the first pipe and after the last


def metric_table(results: list[dict[str, Any]], metric: str) -> str:
    """Rows = heads, columns = generators and the mean over them, as the terminal shows them."""
    from pipeline.method.metrics import table

    return markdown_html(table(results, metric))


def thumbnail(path: str, objects: list[dict[str, Any]], max_pixels: int, size: int = 320, image_id=None) -> bytes:
    """The image with its grounded boxes drawn and numbered, as JPEG bytes (a grey card saying why
    when the file is gone or no longer holds the image's bytes)."""
    from PIL import Image

    from pipeline.engine.imageio import ImageDecodeError, load_rgb

    try:
        image = load_rgb(path, max_pixels, image_id)
    except ImageDecodeError as e:
        card = Image.new("RGB", (size, size // 2), (200, 200, 200))
        ImageDraw.Draw(card).text((8, 8), str(e)[:60], fill=(60, 60, 60))
        buf = io.BytesIO()
        card.save(buf, format="JPEG", quality=85)
        return buf.getvalue()
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(image.size) / 200))
    for i, obj in enumerate(objects, 1):
        draw.rectangle(obj["box"], outline=(255, 40, 40), width=width)
        draw.text((obj["box"][0] + 2, obj["box"][1] + 1), str(i), fill=(255, 255, 0))
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def robustness(config: PipelineConfig, store: Store, head) -> dict[str, Any] | None:
    """AP and ACC of `head` on each perturbation and level, and on the same sources clean (the robustness job)."""
    from pipeline.app.runner import run_steps

    [(job, _)] = run_steps(["robustness"], config, store, options={"robustness": {"model": head.directory}})
    return job.result


def build(config: PipelineConfig, store: Store, sample: int = 12) -> Path:
    """Write reports/report.html (and the PNG plots beside it); returns its path."""
    from pipeline.app import plots
    from pipeline.app.runner import run_steps
    from pipeline.method import formatbias
    from pipeline.method.heads import FittedHead
    from pipeline.method.rows import labelled_rows, latest_model, to_numpy

    reports = store.reports
    figures = reports / "figures"
    model_dir = latest_model(store)
    head = FittedHead(model_dir)
    [(stage, _)] = run_steps(["evaluate"], config, store, options={"evaluate": {"models": [model_dir]}})
    result = stage.result
    parts = [
        f"<h1>ITEM report</h1><p class='note'>data: {html.escape(str(store.root))} &middot; head "
        f"{html.escape(head.name)} &middot; split {html.escape(result['split'])} &middot; "
        f"{time.strftime('%Y-%m-%d %H:%M')}</p>"
    ]
    if config.profile == "tiny":
        parts.append(
            "<p class='warn'>tiny profile: random-weight models. These numbers only show that the "
            "pipeline runs end to end; they say nothing about detection.</p>"
        )
    parts.append(
        "<h2>Evaluation</h2><p class='note'>One row per head; a column per generator, each scored on its own "
        "real and fake images, and <b>mean</b>: the mean over the generators' columns (the paper's "
        "layout). The last row gives the images each column rests on, <b>n (real/fake)</b>; † marks a "
        "cell resting on too few of either class to trust.</p>"
    )
    for metric, name in (
        ("acc", "ACC at 0.5"),
        ("ap", "AP"),
        ("auc", "AUC"),
        ("acc_calibrated", "ACC, calibrated"),
        ("tpr_at_5fpr", "TPR at 5% FPR"),
    ):
        named = {**result, "model": result.get("label") or result["model"]}  # folder, features, w1/w2
        parts.append(f"<h3>{name} (%)</h3>{metric_table([named], metric)}")
    comparison = reports / "comparison.json"
    if comparison.exists():
        parts.append("<h2>Baselines on the same cache</h2>")
        for metric in ("acc", "ap"):
            md = (reports / f"comparison_{metric}.md").read_text()
            parts.append(f"<h3>{metric.upper()} (%)</h3>" + markdown_html(md))
    distance_fp = head.config["features"]["fingerprint"]
    test = labelled_rows(store, distance_fp, result["split"])
    x = head.features(to_numpy(test["d_global"]), to_numpy(test["d_local"]))
    scores = head.predict_proba(x)
    labels = test["label"].to_numpy()
    parts.append(
        "<h2>Plots</h2><p class='note'>The PR and ROC curves pool every test image into one ranking, so "
        "their AP and AUC (in the titles) can differ from the tables' <b>mean</b>, which averages the "
        "per-generator figures; the bars show each generator's AP.</p>"
    )
    if len(set(labels.tolist())) == 2:
        pooled = f"{head.name}: all {len(labels)} test images pooled"
        parts.append(img_tag(plots.pr_roc(labels, scores, figures / "pr_roc.png", pooled), "PR and ROC curves"))
    parts.append(img_tag(plots.generator_bars([result], "ap", figures / "generators_ap.png"), "AP per generator"))
    parts.append(tsne_figures(head, labelled_rows(store, distance_fp), figures))
    robust = robustness(config, store, head)
    if robust:
        parts.append("<h2>Robustness (Fig. 4)</h2>")
        rows = [
            [kind, *(f"{lvl:g}: AP {100 * (m['ap'] or 0):.1f} / ACC {100 * m['acc']:.1f}" for lvl, m in pts)]
            for kind, pts in robust["grid"].items()
        ]
        parts.append(table_html(rows, ["perturbation", "level 1", "level 2", "level 3"]))
        clean_ap = (robust["clean"] or {}).get("ap") or 0.0
        lines = {k: [(lvl, m["ap"] or 0.0) for lvl, m in pts] for k, pts in robust["grid"].items()}
        parts.append(img_tag(plots.robustness_lines(lines, clean_ap, figures / "robustness.png"), "robustness"))
    bias = formatbias.summary(store)
    parts.append("<h2>Format bias</h2>")
    parts.append(table_html([[str(v) if v is not None else "-" for v in r] for r in bias.rows()], bias.columns))
    for warning in formatbias.warnings(bias):
        parts.append(f"<p class='warn'>{html.escape(warning)}</p>")
    if not formatbias.warnings(bias):
        parts.append("<p class='note'>No systematic difference between real and fake storage found.</p>")
    half = sample // 2
    parts.append(
        "<h2>Explanations</h2><p class='note'>How these were chosen: the "
        f"{half} test images the head scores most real (lowest P(fake)) and the {sample - half} it scores "
        "most fake (highest), so the head's surest calls; `item report --sample N` shows more. Each card: "
        "the image with the grounded objects' boxes, numbered; the <b>true label</b> "
        "(<b class='real'>real</b> / <b class='fake'>fake</b>, from the manifest); <b>P(fake)</b>, the "
        "head's uncalibrated score (≥ 0.5 is called fake); the generator; the caption; and per object its "
        "phrase, the grounder's box score and the CLIP cosine between crop and phrase (low: the object "
        "matches its words poorly, what ITEM looks for).</p>" + explanations(config, store, head, test, scores, sample)
    )
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>ITEM report</title>"
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    target = reports / "report.html"
    target.write_text(page)
    return target


def tsne_figures(head, rows: pl.DataFrame, figures: Path) -> str:
    """Fig. 9: a t-SNE of D for every image pooled and one per panel generator (its fakes with the reals
    it is scored against; `evaluation.tsne_panels`), side by side, each titled with its panel."""
    from pipeline.app import plots
    from pipeline.method.evaluation import tsne_panels
    from pipeline.method.rows import to_numpy

    if rows.height <= 5:
        return ""
    shown = []
    for k, (title, panel) in enumerate(tsne_panels(rows).items()):
        if panel.height <= 5:  # too few points for a t-SNE
            continue
        d = head.features(to_numpy(panel["d_global"]), to_numpy(panel["d_local"]))
        name = "tsne.png" if k == 0 else f"tsne-{k}-{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}.png"
        heading = "every generator pooled" if title == "all" else title
        path = plots.tsne(
            d, panel["label"].to_numpy(), panel["generator"].fill_null("-").to_list(), figures / name, title=heading
        )
        n_fake = int(panel["label"].sum())
        shown.append(
            f"<figure class='tsne'>{img_tag(path, f't-SNE of D: {heading}')}<figcaption>{html.escape(heading)}: "
            f"{panel.height} images ({panel.height - n_fake} real / {n_fake} fake)</figcaption></figure>"
        )
    note = (
        "<p class='note'>t-SNE of D (Fig. 9): every image pooled, then per generator its fakes with the reals "
        "it is scored against (ProGAN, LDM and StarGAN when present, else up to three of the data's own); "
        "at most 1,500 images a panel, a seeded sample.</p>"
    )
    return note + f"<div class='panels'>{''.join(shown)}</div>" if shown else ""


def explanations(config: PipelineConfig, store: Store, head, test: pl.DataFrame, scores: np.ndarray, n: int) -> str:
    """Cards for the most confident real and fake test images: boxes, caption, per-object cosines."""
    from pipeline.app.api import head_pipeline
    from pipeline.app.runner import make_stage
    from pipeline.method.misalignment import object_cosines

    order = np.argsort(scores)
    chosen = list(dict.fromkeys([*order[: n // 2].tolist(), *order[::-1][: n - n // 2].tolist()]))
    ids = [test["image_id"][int(i)] for i in chosen]
    pipeline_config = head_pipeline(head)  # the configuration the head's features were computed with
    frames = {}
    for name, cols in (
        ("caption", ["caption"]),
        ("ground", ["objects"]),
        ("embed", ["object_image_embeds", "object_text_embeds"]),
    ):
        part_dir = store.features(name, make_stage(name, pipeline_config, store).fingerprint)
        frames[name] = {
            r["image_id"]: r for r in pl.from_arrow(part_dir.read(["image_id", *cols], ids=ids)).iter_rows(named=True)
        }
    paths = dict(pl.from_arrow(store.manifest.read(["image_id", "path"], ids=ids)).iter_rows())
    max_pixels = config.stage("ingest").max_image_pixels
    cards = []
    for i, image_id in zip(chosen, ids, strict=True):
        objects = (frames["ground"].get(image_id) or {}).get("objects") or []
        emb = frames["embed"].get(image_id) or {}
        cosines = object_cosines(emb.get("object_image_embeds"), emb.get("object_text_embeds"))
        truth = "fake" if test["label"][int(i)] == 1 else "real"
        rows = [
            [str(k), o["phrase"], f"{o['score']:.2f}", f"{c:.3f}"]
            for k, (o, c) in enumerate(zip(objects, cosines, strict=False), 1)
        ]
        caption = (frames["caption"].get(image_id) or {}).get("caption") or ""
        cards.append(
            f"<div class='card'>{img_tag(thumbnail(paths[image_id], objects, max_pixels, image_id=image_id), caption)}"
            f"<p>true label <b class='{truth}'>{truth}</b> &middot; P(fake) {scores[int(i)]:.3f} &middot; "
            f"{html.escape(test['generator'][int(i)] or '-')}</p><p>&ldquo;{html.escape(caption)}&rdquo;</p>"
            + (
                table_html(rows, ["#", "phrase", "box score", "cosine"])
                if rows
                else "<p class='note'>no object grounded</p>"
            )
            + "</div>"
        )
    return f"<div class='cards'>{''.join(cards)}</div>"
