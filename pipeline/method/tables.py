"""The paper's Tables I-III beside ours: its reference figures (paper_tables.json, package data), our
figures per column with the difference, and the tables in the paper's layout as Markdown.

Table I (ACC) and Table II (AP) share their columns: CNNDetection's test set (8 GANs and Deepfakes)
and UniversalFakeDetect's diffusion sets; Table III (ACC/AP): GenImage's ADM, Glide, VQDM and
DiffusionForensics' generators. Each column names the folders its images lie in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.method.metrics import MIN_PER_CLASS, markdown_cell, too_few

PAPER_TABLES = Path(__file__).with_name("paper_tables.json")


@dataclass(frozen=True)
class Column:
    """One generator column of the paper: where its images are and the paper's ITEM figures (%)."""

    label: str  # the header as the paper prints it
    dataset: str  # the benchmark that holds it (cnndetection, ufd, genimage, diffusionforensics)
    folders: tuple[str, ...]  # folder names that hold its images
    acc: float
    ap: float


@dataclass(frozen=True)
class PaperTable:
    """A table of the paper: its columns, the metrics of each cell and the paper's mean column."""

    key: str  # I, II, III
    title: str
    metrics: tuple[str, ...]  # ("acc",), ("ap",) or ("acc", "ap") for Table III's ACC/AP cells
    columns: tuple[Column, ...]
    mean: tuple[float, ...]  # the paper's mean column, one value per metric
    mean_label: str = "Avg."


def load_tables(path: Path = PAPER_TABLES) -> tuple[tuple[PaperTable, ...], int]:
    """The paper's tables and its ProGAN training images per class, from the data file."""
    data = json.loads(path.read_text())
    columns = {
        name: tuple(Column(**{**c, "folders": tuple(c["folders"])}) for c in group)
        for name, group in data["columns"].items()
    }
    tables = tuple(
        PaperTable(t["key"], t["title"], tuple(t["metrics"]), columns[t["columns"]], tuple(t["mean"]), t["mean_label"])
        for t in data["tables"]
    )
    return tables, data["train_count"]


TABLES, PAPER_TRAIN_COUNT = load_tables()

# Where a column's images are: (the manifest generator scored for it, or None; why it would have no figures).
Located = Callable[[Column], tuple[str | None, str]]


def compared(groups: dict[str, dict[str, Any]], located: Located) -> list[dict[str, Any]]:
    """The three tables as data: per column our figures (from the evaluation's generator groups), the
    paper's and the difference, and the mean."""
    out = []
    for table in TABLES:
        columns = [_cell(table, c, groups, located) for c in table.columns]
        out.append(
            {
                "table": table.key,
                "title": table.title,
                "metrics": list(table.metrics),
                "columns": columns,
                "mean": _mean(table, columns),
                "mean_label": table.mean_label,
            }
        )
    return out


def _cell(table: PaperTable, column: Column, groups: dict[str, dict[str, Any]], located: Located) -> dict[str, Any]:
    generator, why = located(column)
    group = groups.get(generator) if generator else None
    paper = {m: getattr(column, m) for m in table.metrics}
    ours = {m: _percent(group, m) for m in table.metrics}
    cell = {
        "column": column.label,
        "dataset": column.dataset,
        "generator": generator,
        "ours": ours,
        "paper": paper,
        "delta": {m: None if ours[m] is None else round(ours[m] - paper[m], 2) for m in table.metrics},
        "few": bool(group is not None and too_few(group)),
        "missing": None if group is not None else why if generator is None else f"no scored test images of {generator}",
    }
    if group is not None:
        cell.update({k: group.get(k) for k in ("n", "n_real", "n_fake")})
        for k in ("acc_ci95", "ap_ci95"):  # percent, as the figures
            cell[k] = None if group.get(k) is None else [round(100 * v, 2) for v in group[k]]
    return cell


def _percent(group: dict[str, Any] | None, metric: str) -> float | None:
    value = None if group is None else group.get(metric)
    return None if value is None else round(100 * value, 2)


def _mean(table: PaperTable, columns: list[dict[str, Any]]) -> dict[str, Any]:
    """Our mean over the columns measured; with some missing, the paper's mean over the same columns is
    the one our figure compares with (its printed mean covers every column)."""
    paper_mean = dict(zip(table.metrics, table.mean, strict=True))
    out: dict[str, Any] = {"ours": {}, "paper": paper_mean, "paper_of_measured": {}, "delta": {}, "columns": {}}
    for m in table.metrics:
        present = [c for c in columns if c["ours"][m] is not None]
        out["columns"][m] = len(present)
        if not present:
            out["ours"][m] = out["delta"][m] = out["paper_of_measured"][m] = None
            continue
        ours = sum(c["ours"][m] for c in present) / len(present)
        paper = paper_mean[m] if len(present) == len(columns) else sum(c["paper"][m] for c in present) / len(present)
        out["ours"][m], out["delta"][m], out["paper_of_measured"][m] = round(ours, 2), round(ours - paper, 2), paper
    out["partial"] = any(n < len(columns) for n in out["columns"].values()) and any(out["columns"].values())
    return out


def _joined(values: Iterable[str | None]) -> str:
    values = list(values)
    return "-" if all(v is None for v in values) else "/".join("-" if v is None else v for v in values)


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str | None:
    return None if value is None else f"{value:+.2f}"


def _count(cell: dict[str, Any]) -> str:
    if cell.get("n") is None:
        return "-"
    return f"{cell['n']} ({cell['n_real']}/{cell['n_fake']})"


def render_table(table: dict[str, Any]) -> str:
    """One table in the paper's layout (Markdown): a column per generator and the mean; rows ours, the
    paper's ITEM row and the difference, then the images each column rests on."""
    metrics, columns, mean = table["metrics"], table["columns"], table["mean"]
    name = "/".join(m.upper() for m in metrics)
    header = [f"{name} (%)", *(markdown_cell(c["column"]) for c in columns), markdown_cell(table["mean_label"])]
    star = "*" if mean["partial"] else ""
    rows = [
        ["ITEM (ours)"]
        + [_joined(_number(c["ours"][m]) for m in metrics) + ("†" if c["few"] else "") for c in columns]
        + [_joined(_number(mean["ours"][m]) for m in metrics) + star],
        ["ITEM (paper)"]
        + [_joined(_number(c["paper"][m]) for m in metrics) for c in columns]
        + [_joined(_number(mean["paper"][m]) for m in metrics)],
        ["Δ (ours − paper)"]
        + [_joined(_signed(c["delta"][m]) for m in metrics) for c in columns]
        + [_joined(_signed(mean["delta"][m]) for m in metrics) + star],
        ["n (real/fake)", *(_count(c) for c in columns), "-"],
    ]
    lines = [
        f"### Table {table['table']}: {table['title']}",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    notes = _notes(table)
    return "\n".join(lines + ([""] + notes if notes else []))


def _notes(table: dict[str, Any]) -> list[str]:
    columns, mean = table["columns"], table["mean"]
    notes = []
    if any(c["few"] for c in columns):
        notes.append(
            f"† rests on fewer than {MIN_PER_CLASS} real or {MIN_PER_CLASS} fake images: unreliable "
            "(95% bootstrap intervals in reproduce.json)"
        )
    if mean["partial"]:
        measured = max(mean["columns"].values())
        notes.append(
            f"* mean over the {measured} of {len(columns)} columns measured; its Δ is against the paper's "
            "values of those columns (the paper's Avg. covers all)"
        )
    reasons: dict[str, list[str]] = {}
    for c in columns:
        if c["missing"]:
            reasons.setdefault(c["missing"], []).append(c["column"])
    notes += [f"- {', '.join(labels)}: {reason}" for reason, labels in reasons.items()]
    return notes


def render(result: dict[str, Any]) -> str:
    """The three tables with a line saying what was trained on what (`result["protocol"]`)."""
    p = result["protocol"]
    counts = p["counts"]
    lines = [
        f"ITEM trained on {counts['train_real']} real + {counts['train_fake']} fake ProGAN images of CNNDetection "
        f"(seed {p['seed']}, subset {p['subset']}; the paper: {PAPER_TRAIN_COUNT:,} + {PAPER_TRAIN_COUNT:,}), "
        f"calibrated on {counts['val_real']} + {counts['val_fake']}; head {p['head']}, profile {p['profile']}, "
        f"ACC at threshold {p['threshold']:g}.",
    ]
    return "\n\n".join([*lines, *(render_table(t) for t in result["tables"])]) + "\n"
