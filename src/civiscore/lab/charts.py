"""Charts for the policy-lab report: matplotlib on the Agg backend, embedded as base64 PNG.

A :class:`Chart` holds the numbers it draws (``x`` and named ``series``) apart from the drawing,
so the report can print the same numbers as a table and the tests can check that the figure's
lines and bars are exactly those numbers, and those numbers exactly the tables written to disk.
Every chart has a title, axis labels with units, a legend when it has more than one series, and
sizes readable in print (A4 width at 100 dpi).
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from typing import Literal

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display, no GUI toolkit: the report is built on servers and in CI

from matplotlib.figure import Figure

BAND_COLOURS = {
    "AAA": "#1a7f37",
    "AA": "#2da44e",
    "A": "#6cc644",
    "B": "#d4a72c",
    "C": "#e16f24",
    "D": "#cf222e",
}
# Colour-blind-safe (Okabe-Ito) for everything that is not a band.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
STYLES = ("-", "--", "-.", ":")


@dataclass
class Chart:
    """One figure: what it shows and the numbers it is drawn from.

    Attributes:
        title: Printed above the figure and used as the image's alternative text.
        xlabel: Label of the x axis, with its unit.
        ylabel: Label of the y axis, with its unit.
        x: Category or month labels, in order.
        series: Each line (or set of bars) by legend label, one value per ``x``.
        kind: "line" or "bar".
        source: The table (file name without extension) the numbers come from.
        reference: A horizontal reference line (value, label), such as the four-fifths line.
        log_y: Plot the y axis on a log scale (values of 0 are not drawn).
        colours: Colour per series label, when it means something (bands).
    """

    title: str
    xlabel: str
    ylabel: str
    x: list[str]
    series: dict[str, list[float]]
    kind: Literal["line", "bar"] = "line"
    source: str = ""
    reference: tuple[float, str] | None = None
    log_y: bool = False
    colours: dict[str, str] = field(default_factory=dict)

    def figure(self) -> Figure:
        """The matplotlib figure (built afresh on each call)."""
        fig = Figure(figsize=(8.0, 3.8), layout="constrained")
        ax = fig.subplots()
        positions = list(range(len(self.x)))
        labels = list(self.series)
        if self.kind == "bar":
            width = 0.8 / max(len(labels), 1)
            for i, label in enumerate(labels):
                offset = (i - (len(labels) - 1) / 2) * width
                ax.bar(
                    [p + offset for p in positions],
                    self.series[label],
                    width=width,
                    label=label,
                    color=self.colours.get(label, COLOURS[i % len(COLOURS)]),
                )
        else:
            for i, label in enumerate(labels):
                ax.plot(
                    positions,
                    self.series[label],
                    label=label,
                    color=self.colours.get(label, COLOURS[i % len(COLOURS)]),
                    # Styles differ between neighbours too, so equal series stay visible.
                    linestyle=STYLES[i % len(STYLES)],
                    linewidth=1.8,
                    marker="o" if len(positions) <= 12 else None,
                    markersize=3,
                )
        if self.reference is not None:
            value, text = self.reference
            # A leading underscore keeps the reference line out of the data the tests compare.
            ax.axhline(value, color="#555555", linestyle=":", linewidth=1.2, label=f"_{text}")
            ax.annotate(
                text,
                (1.0, value),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                fontsize=8,
                color="#555555",
            )
        ax.set_title(self.title, fontsize=11, loc="left", wrap=True)
        ax.set_xlabel(self.xlabel, fontsize=9)
        ax.set_ylabel(self.ylabel, fontsize=9)
        step = 1 if self.kind == "bar" else max(1, math.ceil(len(positions) / 14))
        ax.set_xticks(positions[::step])
        rotate = 45 if max((len(s) for s in self.x), default=0) > 4 else 0
        ax.set_xticklabels(self.x[::step], rotation=rotate, ha="right" if rotate else "center")
        ax.tick_params(labelsize=8)
        if self.log_y:
            ax.set_yscale("log")
        ax.grid(True, axis="y", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        if len(labels) > 1:
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return fig

    def png_base64(self) -> str:
        """The figure as a base64 PNG, for an ``<img src="data:image/png;base64,...">``."""
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=100)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def rows(self) -> list[list[str]]:
        """The chart's numbers as table rows: x, then one cell per series."""
        return [
            [x, *(_cell(self.series[label][i]) for label in self.series)]
            for i, x in enumerate(self.x)
        ]


def _cell(value: float) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,.0f}"


def drawn(fig: Figure) -> dict[str, list[float]]:
    """What a figure actually draws, by legend label: each line's y values or bars' heights.

    Used by the tests to check a figure against its numbers; reference lines (labels starting
    with an underscore) are left out.
    """
    out: dict[str, list[float]] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            label = str(line.get_label())
            if not label.startswith("_"):
                out[label] = [float(v) for v in np.asarray(line.get_ydata(), dtype=float)]
        for container in ax.containers:
            label = str(container.get_label())
            out[label] = [float(p.get_height()) for p in container]
    return out
