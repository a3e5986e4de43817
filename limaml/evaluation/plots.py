"""PNG plots of summaries, drawn on matplotlib `Figure`s (Agg canvas, no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from limaml.evaluation.report import Summary


def _points(cells: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Means and [2, n] error bar lengths (0 where there is no interval)."""
    mean = np.array([np.nan if c["auc"] is None else c["auc"] for c in cells], dtype=float)
    low = np.array([m if c["ci_low"] is None else c["ci_low"] for c, m in zip(cells, mean)], dtype=float)
    high = np.array([m if c["ci_high"] is None else c["ci_high"] for c, m in zip(cells, mean)], dtype=float)
    return mean, np.nan_to_num(np.stack([mean - low, high - mean]))


def plot_buckets(summary: Summary, path: Path, title: str) -> None:
    """AUC by prior-interaction bucket, one series per row of the summary."""
    figure = Figure(figsize=(9, 5))
    axes = figure.subplots()
    columns = list(next(iter(summary.values())))
    x = np.arange(len(columns))
    width = 0.8 / len(summary)
    for i, (row, cells) in enumerate(summary.items()):
        mean, error = _points([cells[c] for c in columns])
        axes.errorbar(x + (i - (len(summary) - 1) / 2) * width, mean, yerr=error, fmt="o",
                      capsize=3, label=row)
    counts = next(iter(summary.values()))
    axes.set_xticks(x, [f"{c}\n(n={counts[c]['n']})" for c in columns])
    axes.set_xlabel("member's prior interactions")
    _finish(axes, figure, path, title, "AUC (mean and 95% CI over seeds)")


def plot_refresh(sweep: Summary, references: Summary, path: Path, title: str) -> None:
    """Overall AUC against the streaming refresh interval N, with reference systems as lines."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    intervals = [int(n) for n in sweep]
    mean, error = _points([sweep[n]["all"] for n in sweep])
    axes.errorbar(intervals, mean, yerr=error, fmt="o-", capsize=3, label="limaml_streaming(N)")
    for i, (name, cells) in enumerate(references.items()):
        cell = cells["all"]
        if cell["auc"] is not None:
            axes.axhline(cell["auc"], linestyle="--", linewidth=1, label=name, color=f"C{i + 1}")
    axes.set_xscale("log")
    axes.set_xticks(intervals, [str(n) for n in intervals])
    axes.set_xlabel("refresh interval N (member's new events between re-adaptations)")
    _finish(axes, figure, path, title, "AUC over all test events")


def plot_lines(series: Mapping[str, tuple[Sequence[str], Sequence[Mapping[str, Any]]]], path: Path,
               title: str, xlabel: str, ylabel: str) -> None:
    """One line with error bars per named series of (x labels, cells)."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for name, (labels, cells) in series.items():
        mean, error = _points(cells)
        axes.errorbar(np.arange(len(labels)), mean, yerr=error, fmt="o-", capsize=3, label=name)
        axes.set_xticks(np.arange(len(labels)), list(labels))
    axes.set_xlabel(xlabel)
    _finish(axes, figure, path, title, ylabel)


def plot_panels(panels: Mapping[str, tuple[Sequence[str], Mapping[str, Sequence[Mapping[str, Any]]]]],
                path: Path, title: str, ylabel: str) -> None:
    """A row of panels, one per factor: each series' cells against the factor's values."""
    figure = Figure(figsize=(4 * len(panels), 4))
    all_axes = np.atleast_1d(figure.subplots(1, len(panels), sharey=True))
    for axes, (name, (labels, series)) in zip(all_axes, panels.items()):
        for series_name, cells in series.items():
            mean, error = _points(cells)
            axes.errorbar(np.arange(len(labels)), mean, yerr=error, fmt="o-", capsize=3,
                          label=series_name)
        axes.set_xticks(np.arange(len(labels)), list(labels))
        axes.set_xlabel(name)
        axes.grid(alpha=0.3)
    all_axes[0].set_ylabel(ylabel)
    all_axes[0].legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _finish(axes: Axes, figure: Figure, path: Path, title: str, ylabel: str) -> None:
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
