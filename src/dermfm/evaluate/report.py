"""Reports of a benchmark run: ``results.json``, ``report.md`` and ``report.html``.

The report is built once as a list of blocks (headings, paragraphs, tables, figures) and
rendered to Markdown and to a self-contained HTML page (figures linked from ``plots/``), so
both always say the same thing. Every metric cell reads ``value [low, high]`` with the 95%
bootstrap interval.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dermfm.cache import atomic_write_bytes
from dermfm.evaluate.metrics import Estimate


@dataclass(frozen=True)
class Block:
    """One piece of a report: ``kind`` is heading, text, table or figure."""

    kind: str
    text: str = ""
    level: int = 2
    rows: tuple[tuple[str, ...], ...] = ()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value


def cell(value: Any) -> str:
    """Display text of a result value (an Estimate dict shows ``value [low, high]``)."""
    if isinstance(value, Mapping) and {"value", "low", "high", "n", "n_boot"} <= set(value):
        if value["value"] is None or not math.isfinite(value["value"]):
            return "—"
        nan = float("nan")
        fields = {k: nan if value[k] is None else value[k] for k in ("value", "low", "high")}
        return str(Estimate(name="", n=value["n"], n_boot=value["n_boot"], **fields))
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else "—"
    return "—" if value is None else str(value)


def _metric_rows(sections: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[tuple[str, ...], ...]:
    """A table: one row per (label, metrics mapping), one column per metric name."""
    sections = list(sections)
    columns: list[str] = []
    for _, found in sections:
        columns += [k for k in found if k not in columns]
    rows = [("", *columns)]
    rows += [(label, *(cell(found.get(c)) for c in columns)) for label, found in sections]
    return tuple(rows)


def _runs_of(results: Mapping[str, Any], dataset: str) -> list[Mapping[str, Any]]:
    return [r for r in results["runs"] if r["dataset"] == dataset]


def _dataset_blocks(results: Mapping[str, Any], dataset: str) -> list[Block]:
    runs = _runs_of(results, dataset)
    first = runs[0]
    reader = first.get("reader", {})
    blocks = [
        Block("heading", f"Dataset: {dataset} ({first['split']} split)", 2),
        Block(
            "text",
            f"Label set `{first['label_set']}`; {first.get('n_images', 0)} images evaluated. "
            f"Scores: {first.get('score_kind', 'raw')}. Reader: {reader.get('summary', '')}",
        ),
    ]

    def table(title: str, key: str, pick: Any) -> None:
        rows = [(r["model"], pick(r[key])) for r in runs if isinstance(r.get(key), Mapping)]
        rows = [(m, found) for m, found in rows if found]
        if rows:
            blocks.extend([Block("heading", title, 3), Block("table", rows=_metric_rows(rows))])

    table("Zero-shot classification", "zeroshot", lambda z: z.get("metrics"))
    table("One-vs-rest AUROC per class", "zeroshot", lambda z: z.get("per_class_auroc"))
    table(
        "Malignant vs benign (through the ontology)",
        "zeroshot",
        lambda z: (z.get("malignancy") or {}).get("metrics"),
    )
    table(
        "Calibration",
        "calibration",
        lambda c: {
            "temperature": c.get("temperature"),
            "ece_raw": c["raw"]["ece"],
            "ece_calibrated": (c.get("calibrated") or {}).get("ece"),
            "nll_raw": c["raw"]["nll"],
            "nll_calibrated": (c.get("calibrated") or {}).get("nll"),
        },
    )
    table("Concept annotation (AUROC)", "concepts", lambda c: c.get("per_concept_auroc"))
    table("Retrieval", "retrieval", lambda c: c.get("metrics"))
    table("Linear probe", "linear_probe", lambda c: c.get("metrics"))
    for run in runs:
        blocks += _run_detail_blocks(run)
    blocks += _comparison_blocks(results, dataset)
    return blocks


def _run_detail_blocks(run: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = [Block("heading", f"{run['model']}: details", 3)]
    if run.get("error"):
        blocks.append(Block("text", f"Not evaluated: {run['error']}."))
    if run.get("failed_images"):
        shown = "; ".join(run["failed_images"][:5])
        blocks.append(Block("text", f"{len(run['failed_images'])} images failed: {shown}"))
    concepts = run.get("concepts") or {}
    if concepts.get("n_concepts"):
        blocks.append(
            Block(
                "text",
                f"Concepts: mean AUROC {cell(concepts['mean_auroc'])}, "
                f"{concepts['n_above_0_7']} of {concepts['n_concepts']} above 0.7.",
            )
        )
    leak = run.get("leakage") or {}
    if "counts" in leak:
        counts = ", ".join(f"{k}: {v}" for k, v in leak["counts"].items())
        text = f"Leakage audit against {leak['reference']}: {counts}."
        if "excluded" in leak:
            text += f" {leak['excluded']} evaluated images excluded before measuring."
        blocks.append(Block("text", text))
    for key, table in (run.get("fairness") or {}).items():
        blocks.append(Block("heading", f"Subgroups: {key}", 4))
        blocks.append(Block("table", rows=_fairness_rows(table)))
    few = run.get("few_shot") or []
    if few:
        rows = [("setting", "seed", "n_train", "balanced_accuracy", "accuracy")]
        for r in few:
            m = r.get("metrics", {})
            rows.append(
                (
                    str(r.get("setting")),
                    str(r.get("seed")),
                    str(r.get("n_train")),
                    cell(m.get("balanced_accuracy")),
                    cell(m.get("accuracy")),
                )
            )
        blocks += [Block("heading", "Few-shot linear probes", 4), Block("table", rows=tuple(rows))]
    for name, path in (run.get("files") or {}).items():
        kind = "figure" if path.endswith(".png") else "text"
        blocks.append(Block(kind, path if kind == "figure" else f"{name}: `{path}`"))
    return blocks


def _fairness_rows(table: Mapping[str, Any]) -> tuple[tuple[str, ...], ...]:
    metric_names = list(table.get("metrics", []))
    rows = [("group", "n", *metric_names, *(f"gap {m}" for m in metric_names))]
    for row in table.get("rows", []):
        rows.append(
            (
                str(row["group"]),
                str(row["n"]),
                *(cell(row["estimates"].get(m)) for m in metric_names),
                *(cell((row.get("gaps") or {}).get(m)) for m in metric_names),
            )
        )
    return tuple(rows)


def _comparison_blocks(results: Mapping[str, Any], dataset: str) -> list[Block]:
    found = [c for c in results.get("comparisons", []) if c["dataset"] == dataset]
    if not found:
        return []
    rows = [("model A", "model B", "metric", "A", "B", "B - A [95% CI]", "p")]
    for comp in found:
        for name, m in comp["metrics"].items():
            rows.append(
                (
                    comp["model_a"],
                    comp["model_b"],
                    name,
                    cell(m["value_a"]),
                    cell(m["value_b"]),
                    cell(m["difference"]),
                    f"{m['p_value']:.4f}",
                )
            )
    return [
        Block("heading", "Paired comparisons (same images, paired bootstrap)", 3),
        Block("table", rows=tuple(rows)),
    ]


def build_blocks(results: Mapping[str, Any]) -> list[Block]:
    """The report's blocks, in order."""
    config = results["config"]
    n_boot = config["options"]["n_boot"]
    blocks = [
        Block("heading", f"dermfm evaluation: {config['name']}", 1),
        Block(
            "text",
            f"Created {results.get('created', '')} with dermfm {results.get('dermfm_version', '')}."
            f" Models: {', '.join(config['models'])}. Tasks: {', '.join(config['tasks'])}. "
            f"Intervals are 95% percentile bootstrap intervals over {n_boot} resamples of whole "
            "clusters (lesion, patient or photo groups), so images of one lesion never count as "
            "independent evidence. These are research metrics on the stated data, not evidence "
            "of clinical performance.",
        ),
    ]
    for error in results.get("errors", []):
        blocks.append(Block("text", "Error: " + ", ".join(f"{k} {v}" for k, v in error.items())))
    datasets = list(dict.fromkeys(r["dataset"] for r in results["runs"]))
    for dataset in datasets:
        blocks += _dataset_blocks(results, dataset)
    return blocks


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def render_markdown(blocks: Iterable[Block]) -> str:
    """The blocks as Markdown."""
    out: list[str] = []
    for b in blocks:
        if b.kind == "heading":
            out.append("#" * b.level + " " + b.text)
        elif b.kind == "text":
            out.append(b.text)
        elif b.kind == "figure":
            out.append(f"![{Path(b.text).stem}]({b.text})")
        elif b.kind == "table":
            head, *body = b.rows
            out += [_md_row(head), "|" + "|".join(["---"] * len(head)) + "|"]
            out += [_md_row(r) for r in body]
        out.append("")
    return "\n".join(out)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:1em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.85em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}th{background:#f3f3f3}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.3em 0}code{background:#f5f5f5}"""


def render_html(blocks: Iterable[Block], title: str) -> str:
    """The blocks as one HTML page (figures referenced by relative path)."""
    body: list[str] = []
    for b in blocks:
        if b.kind == "heading":
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif b.kind == "text":
            body.append(f"<p>{html.escape(b.text).replace('`', '')}</p>")
        elif b.kind == "figure":
            src = html.escape(b.text)
            body.append(f'<figure><img src="{src}" alt="{src}" loading="lazy"></figure>')
        elif b.kind == "table":
            head, *rows = b.rows
            cells = "".join(f"<th>{html.escape(c)}</th>" for c in head)
            lines = [f"<table><thead><tr>{cells}</tr></thead><tbody>"]
            for r in rows:
                lines.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
            body.append("".join(lines) + "</tbody></table>")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_report(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and ``report.html`` into ``out``."""
    from dermfm import __version__

    folder = Path(out)
    results.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
    results.setdefault("dermfm_version", __version__)
    blocks = build_blocks(results)
    paths = {
        "results": folder / "results.json",
        "markdown": folder / "report.md",
        "html": folder / "report.html",
    }
    text = json.dumps(_jsonable(results), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(paths["results"], text.encode("utf-8"))
    atomic_write_bytes(paths["markdown"], render_markdown(blocks).encode("utf-8"))
    title = f"dermfm evaluation: {results['config']['name']}"
    atomic_write_bytes(paths["html"], render_html(blocks, title).encode("utf-8"))
    return paths
