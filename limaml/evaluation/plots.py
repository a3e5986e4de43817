"""PNG plots of summaries, drawn on matplotlib `Figure`s (Agg canvas, no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from limaml.evaluation.summary import Interval, Summary

Series = Mapping[str, Sequence[Interval]]
"""Named lines of points, each an observed value with its interval."""


def _points(intervals: Sequence[Interval]) -> tuple[np.ndarray, np.ndarray]:
    """Values and [2, n] error bar lengths (0 where there is no interval)."""
    value = np.array([i.value for i in intervals], dtype=float)
    low = np.array([v if i.low is None else i.low for i, v in zip(intervals, value)], dtype=float)
    high = np.array([v if i.high is None else i.high for i, v in zip(intervals, value)], dtype=float)
    return value, np.nan_to_num(np.stack([value - low, high - value]))


def plot_buckets(summary: Summary, path: Path, title: str, metrics: Sequence[str] = ("auc", "gauc")) -> None:
    """One panel per metric: each row of the summary by prior-interaction bucket."""
    columns = list(next(iter(summary.values())))
    counts = next(iter(summary.values()))
    labels = [f"{c}\n(n={counts[c].n})" for c in columns]
    panels = {metric: {row: [cells[c].interval(metric) for c in columns] for row, cells in summary.items()}
              for metric in metrics}
    plot_panels({metric.upper(): (labels, series) for metric, series in panels.items()}, path, title,
                "value and 95% member-bootstrap interval", xlabel="member's prior interactions")


def plot_lines(series: Series, labels: Sequence[str], path: Path, title: str, xlabel: str,
               ylabel: str) -> None:
    """One line with error bars per named series, against categorical x labels."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    _draw(axes, labels, series, connect=True)
    axes.set_xlabel(xlabel)
    _finish(axes, figure, path, title, ylabel)


def plot_panels(panels: Mapping[str, tuple[Sequence[str], Series]], path: Path, title: str, ylabel: str,
                xlabel: str | None = None, connect: bool = False) -> None:
    """A row of panels, each its own x labels and series."""
    figure = Figure(figsize=(max(6.0, 5.5 * len(panels)), 4.5))
    all_axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for axes, (name, (labels, series)) in zip(all_axes, panels.items()):
        _draw(axes, labels, series, connect)
        axes.set_title(name)
        axes.set_xlabel(xlabel or name)
        axes.grid(alpha=0.3)
    all_axes[0].set_ylabel(ylabel)
    all_axes[-1].legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _draw(axes: Axes, labels: Sequence[str], series: Series, connect: bool) -> None:
    x = np.arange(len(labels))
    width = 0.0 if connect else 0.8 / max(len(series), 1)
    for i, (name, intervals) in enumerate(series.items()):
        value, error = _points(intervals)
        axes.errorbar(x + (i - (len(series) - 1) / 2) * width, value, yerr=error,
                      fmt="o-" if connect else "o", capsize=3, label=name)
    axes.set_xticks(x, list(labels))


def _finish(axes: Axes, figure: Figure, path: Path, title: str, ylabel: str) -> None:
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
