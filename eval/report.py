"""Evaluation results of several configurations: ``metrics.json``, a Markdown and an HTML
report with a table and plots (recall@k curves; quality vs latency).

``metrics.json`` layout (``SCHEMA``; the quality gate reads it back)::

    {
      "schema": "shopsearch.eval.metrics/1",
      "created_at": "2025-01-31T12:00:00+00:00",
      "meta": {"dataset": "homedepot-dev", "command": "...", "commit": "..."},
      "configurations": [
        {
          "name": "lexical",
          "metrics": {"ndcg@10": 0.387, "mrr@10": 0.41, "recall@10": 0.35, ...,
                      "recall@1000": 0.90, "b.ndcg@10": 0.93},
          "latency_ms": {"p50": 0.3, "p95": 1.2},
          "n_queries": 1248,
          "n_left_out": 217,
          "params": {"mode": "lexical"}
        }
      ]
    }

``meta`` and ``params`` are free JSON objects; latencies, ``n_queries`` and
``n_left_out`` may be ``null``. Metric names are those of ``eval.metrics``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA",
    "ConfigResult",
    "MetricsFile",
    "ReportError",
    "ReportPaths",
    "plot_quality_vs_latency",
    "plot_recall_curves",
    "read_metrics_json",
    "write_metrics_json",
    "write_report",
]

logger = logging.getLogger(__name__)

SCHEMA = "shopsearch.eval.metrics/1"
_RECALL_KEY = re.compile(r"^recall@(\d+)$")
_LEADING_METRICS = ("ndcg@10", "mrr@10")
_RECALL_PLOT = "recall_at_k.png"
_SCATTER_PLOT = "quality_vs_latency.png"


class ReportError(Exception):
    """A metrics file is missing or malformed, or a configuration is not in it."""


@dataclass(frozen=True)
class ConfigResult:
    """The measured result of one configuration (e.g. ``"hybrid-rrf+rerank"``)."""

    name: str
    metrics: Mapping[str, float]
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    n_queries: int | None = None
    n_left_out: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """This result as a ``configurations`` entry of ``metrics.json``."""
        return {
            "name": self.name,
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "latency_ms": {"p50": self.latency_p50_ms, "p95": self.latency_p95_ms},
            "n_queries": self.n_queries,
            "n_left_out": self.n_left_out,
            "params": dict(self.params),
        }


@dataclass(frozen=True)
class MetricsFile:
    """The content of a ``metrics.json``."""

    configurations: tuple[ConfigResult, ...]
    meta: Mapping[str, Any]
    created_at: str

    def get(self, name: str | None = None) -> ConfigResult:
        """The configuration called ``name``; with ``None``, the only one in the file.

        Raises:
            ReportError: no such configuration, or ``None`` while the file holds several.
        """
        names = [c.name for c in self.configurations]
        if name is None:
            if len(self.configurations) == 1:
                return self.configurations[0]
            raise ReportError(f"the metrics file holds configurations {names}; name one of them")
        for config in self.configurations:
            if config.name == name:
                return config
        raise ReportError(
            f"configuration {name!r} is not in the metrics file; choose one of {names}"
        )


@dataclass(frozen=True)
class ReportPaths:
    """Files written by ``write_report``; a plot is ``None`` when there was nothing to plot."""

    metrics_json: Path
    markdown: Path
    html: Path
    recall_plot: Path | None
    scatter_plot: Path | None


def _check_unique(results: Sequence[ConfigResult]) -> None:
    names = [r.name for r in results]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"configuration names must be unique; repeated: {duplicates}")


def write_metrics_json(
    results: Sequence[ConfigResult], path: Path, *, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write ``results`` as ``metrics.json`` (layout in the module docstring); return ``path``.

    Raises:
        ValueError: two results share a name.
    """
    _check_unique(results)
    document = {
        "schema": SCHEMA,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "meta": dict(meta or {}),
        "configurations": [r.to_json() for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _optional_number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"{where}: expected a number or null, got {value!r}")
    return float(value)


def _parse_config(entry: Any, where: str) -> ConfigResult:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ReportError(f"{where}: each configuration needs a string 'name'")
    metrics = entry.get("metrics")
    if not isinstance(metrics, dict):
        raise ReportError(f"{where}: 'metrics' must be an object of metric name -> number")
    parsed = {}
    for key, value in metrics.items():
        number = _optional_number(value, f"{where}.metrics[{key!r}]")
        if number is None:
            raise ReportError(f"{where}.metrics[{key!r}] is null; drop unmeasured metrics")
        parsed[key] = number
    latency = entry.get("latency_ms") or {}
    if not isinstance(latency, dict):
        raise ReportError(f"{where}: 'latency_ms' must be an object with p50 and p95")
    params = entry.get("params") or {}
    if not isinstance(params, dict):
        raise ReportError(f"{where}: 'params' must be an object")
    counts = [_optional_number(entry.get(k), f"{where}.{k}") for k in ("n_queries", "n_left_out")]
    return ConfigResult(
        name=entry["name"],
        metrics=parsed,
        latency_p50_ms=_optional_number(latency.get("p50"), f"{where}.latency_ms.p50"),
        latency_p95_ms=_optional_number(latency.get("p95"), f"{where}.latency_ms.p95"),
        n_queries=None if counts[0] is None else int(counts[0]),
        n_left_out=None if counts[1] is None else int(counts[1]),
        params=params,
    )


def read_metrics_json(path: Path) -> MetricsFile:
    """Read a ``metrics.json`` written by ``write_metrics_json``.

    Raises:
        ReportError: the file is missing, not JSON, of another schema, or malformed.
    """
    if not path.is_file():
        raise ReportError(f"{path}: metrics file not found; write one with `shopsearch eval`")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise ReportError(f"{path}: schema is {found!r}, expected {SCHEMA!r}")
    entries = document.get("configurations")
    if not isinstance(entries, list):
        raise ReportError(f"{path}: 'configurations' must be a list")
    configs = tuple(
        _parse_config(entry, f"{path}: configurations[{i}]") for i, entry in enumerate(entries)
    )
    meta = document.get("meta") or {}
    return MetricsFile(
        configurations=configs, meta=meta, created_at=str(document.get("created_at"))
    )


def _recall_points(metrics: Mapping[str, float]) -> list[tuple[int, float]]:
    points = []
    for key, value in metrics.items():
        match = _RECALL_KEY.match(key)
        if match:
            points.append((int(match.group(1)), value))
    return sorted(points)


def _metric_columns(results: Sequence[ConfigResult]) -> list[str]:
    """All metric names of ``results``: nDCG and MRR first, recall@k by k, then the rest."""
    names = {key for r in results for key in r.metrics}
    leading = [m for m in _LEADING_METRICS if m in names]
    recalls = sorted((n for n in names if _RECALL_KEY.match(n)), key=lambda n: int(n.split("@")[1]))
    rest = sorted(names - set(leading) - set(recalls))
    return leading + recalls + rest


def _new_figure(width: float = 8.0, height: float = 5.0) -> Any:
    # The object-oriented Agg API: no pyplot, no global backend switch, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_recall_curves(results: Sequence[ConfigResult], path: Path) -> Path | None:
    """Plot recall@k against k (log axis), one line per configuration, to a PNG.

    Returns ``path``, or ``None`` (nothing written) when no result has a recall@k metric.
    """
    series = [(r.name, _recall_points(r.metrics)) for r in results]
    series = [(name, points) for name, points in series if points]
    if not series:
        return None
    figure = _new_figure()
    axes = figure.add_subplot()
    all_k = sorted({k for _, points in series for k, _ in points})
    for i, (name, points) in enumerate(series):
        ks, values = zip(*points, strict=True)
        axes.plot(ks, values, marker=_MARKERS[i % len(_MARKERS)], linewidth=1.8, label=name)
    axes.set_xscale("log")
    axes.set_xticks(all_k, [str(k) for k in all_k])
    axes.minorticks_off()
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("k (candidates considered)")
    axes.set_ylabel("recall@k")
    axes.set_title("Recall of relevant products at k")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def plot_quality_vs_latency(
    results: Sequence[ConfigResult], path: Path, *, quality_metric: str = "ndcg@10"
) -> Path | None:
    """Scatter ``quality_metric`` against p50 latency, one labelled point per configuration.

    Configurations without a p50 latency or without the metric are left out. Returns
    ``path``, or ``None`` (nothing written) when no configuration has both.
    """
    points = [
        (r.name, r.latency_p50_ms, r.metrics[quality_metric])
        for r in results
        if r.latency_p50_ms is not None and quality_metric in r.metrics
    ]
    if not points:
        return None
    figure = _new_figure()
    axes = figure.add_subplot()
    for i, (name, latency, quality) in enumerate(points):
        axes.scatter(
            [latency], [quality], s=60, marker=_MARKERS[i % len(_MARKERS)], label=name, zorder=3
        )
        axes.annotate(
            name, (latency, quality), xytext=(6, 6), textcoords="offset points", fontsize="small"
        )
    latencies = [p[1] for p in points]
    if min(latencies) > 0 and max(latencies) / min(latencies) > 20:
        from matplotlib.ticker import FuncFormatter

        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_xlabel("p50 latency per query (ms)")
    axes.set_ylabel(quality_metric)
    axes.set_title(f"Quality ({quality_metric}) vs latency (p50)")
    axes.grid(True, alpha=0.3)
    axes.margins(0.15)
    axes.legend(loc="best", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _fmt(value: float | int | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _table_rows(results: Sequence[ConfigResult]) -> tuple[list[str], list[list[str]]]:
    columns = _metric_columns(results)
    header = ["configuration", *columns, "p50 ms", "p95 ms", "queries", "left out"]
    rows = []
    for r in results:
        rows.append(
            [
                r.name,
                *(_fmt(r.metrics.get(c), 4) for c in columns),
                _fmt(r.latency_p50_ms, 2),
                _fmt(r.latency_p95_ms, 2),
                _fmt(r.n_queries, 0),
                _fmt(r.n_left_out, 0),
            ]
        )
    return header, rows


def _markdown(
    title: str,
    results: Sequence[ConfigResult],
    meta: Mapping[str, Any],
    plots: Sequence[tuple[str, Path | None]],
) -> str:
    header, rows = _table_rows(results)
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in meta.items()]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    lines.append("")
    lines.append('"left out": queries without a relevant product, excluded from recall and MRR.')
    for caption, plot in plots:
        lines += ["", f"## {caption}", ""]
        lines.append(f"![{caption}]({plot.name})" if plot else "_nothing to plot_")
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def _html(
    title: str,
    results: Sequence[ConfigResult],
    meta: Mapping[str, Any],
    plots: Sequence[tuple[str, Path | None]],
) -> str:
    esc = html.escape
    header, rows = _table_rows(results)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if meta:
        parts.append("<ul>")
        parts += [f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in meta.items()]
        parts.append("</ul>")
    parts.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    parts.append("</thead><tbody>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>")
    parts.append("</tbody></table>")
    parts.append(
        "<p>“left out”: queries without a relevant product, excluded from recall and MRR.</p>"
    )
    for caption, plot in plots:
        parts.append(f"<h2>{esc(caption)}</h2>")
        if plot is None:
            parts.append("<p><i>nothing to plot</i></p>")
            continue
        data = base64.b64encode(plot.read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
            f'<figcaption><a href="{esc(plot.name)}">{esc(plot.name)}</a></figcaption></figure>'
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    results: Sequence[ConfigResult],
    out_dir: Path,
    *,
    title: str = "shopsearch evaluation",
    meta: Mapping[str, Any] | None = None,
    quality_metric: str = "ndcg@10",
) -> ReportPaths:
    """Write ``metrics.json``, ``report.md``, ``report.html`` and the plot PNGs to ``out_dir``.

    ``meta`` (dataset, command, commit, date, thread count, ...) is listed at the top of
    the reports and stored in ``metrics.json``. The HTML embeds the plots (base64), so
    it is self-contained; the Markdown links the PNG files beside it.

    Raises:
        ValueError: two results share a name.
    """
    _check_unique(results)
    meta = dict(meta or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_json = write_metrics_json(results, out_dir / "metrics.json", meta=meta)
    recall_plot = plot_recall_curves(results, out_dir / _RECALL_PLOT)
    scatter_plot = plot_quality_vs_latency(
        results, out_dir / _SCATTER_PLOT, quality_metric=quality_metric
    )
    plots = [
        ("Recall@k per configuration", recall_plot),
        (f"Quality ({quality_metric}) vs latency (p50)", scatter_plot),
    ]
    markdown = out_dir / "report.md"
    markdown.write_text(_markdown(title, results, meta, plots), encoding="utf-8")
    html_path = out_dir / "report.html"
    html_path.write_text(_html(title, results, meta, plots), encoding="utf-8")
    logger.info("wrote report %s (%d configurations)", html_path, len(results))
    return ReportPaths(metrics_json, markdown, html_path, recall_plot, scatter_plot)
