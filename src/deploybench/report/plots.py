"""Pareto plots as inline SVG strings (matplotlib): front points highlighted and labelled, the rest greyed."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from deploybench.train.plots import confusion_figure, learning_curves_figure  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})


def _span_is_wide(values: list[float]) -> bool:
    values = [v for v in values if v and v > 0]
    return bool(values) and max(values) / min(values) > 20


LABEL_PT = 7
LINE_PT = LABEL_PT + 1.5
MAX_LINES = 3  # names drawn at one spot; the rest are counted (the table lists every row)


def _label_blocks(ax, front: list[dict], x_key: str) -> list[tuple[str, dict, float]]:
    """(text, point, dy) per spot of the plot holding front points: their names, most accurate first, in one
    block of at most MAX_LINES lines above the point, moved up by `dy` points past blocks it would overprint.
    The quantized forms of one model share its MACs and differ in accuracy by hundredths: without this, their
    labels would be drawn over each other. Widths are estimated (0.6 em a character)."""
    to_pt = 72 / ax.figure.dpi
    spots: list[tuple[float, float, list[dict]]] = []
    for p in sorted(front, key=lambda p: -p["accuracy_top1"]):
        x, y = (v * to_pt for v in ax.transData.transform((p[x_key], 100 * p["accuracy_top1"])))
        spot = next((s for s in spots if abs(s[0] - x) < 6 and abs(s[1] - y) < 6), None)
        if spot:
            spot[2].append(p)
        else:
            spots.append((x, y, [p]))
    blocks, placed = [], []
    for x, y, points in spots:
        names = [p["label"] for p in points]
        if len(names) > MAX_LINES:
            names = names[: MAX_LINES - 1] + [f"+{len(names) - MAX_LINES + 1} more here (see the table)"]
        x0, x1, height = x + 4, x + 4 + 0.6 * LABEL_PT * max(map(len, names)), LINE_PT * len(names)
        dy = 4.0
        while any(x0 < bx1 and bx0 < x1 and y + dy < by1 and by0 < y + dy + height for bx0, by0, bx1, by1 in placed):
            dy += LINE_PT
        placed.append((x0, y + dy, x1, y + dy + height))
        blocks.append(("\n".join(names), points[0], dy))
    return blocks


def pareto_svg(points: list[dict], x_key: str, x_label: str, title: str, front_key: str = "pareto") -> str:
    """Accuracy (%) against `x_key` for `points` (dicts with accuracy_top1, x_key, label, front_key and
    optionally latency_ms_ci95 for horizontal error bars). Returns the SVG markup."""
    pts = [p for p in points if p.get(x_key) is not None and p.get("accuracy_top1") is not None]
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for on_front in (False, True):
        sel = [p for p in pts if bool(p.get(front_key)) == on_front]
        if not sel:
            continue
        xs, ys = [p[x_key] for p in sel], [100 * p["accuracy_top1"] for p in sel]
        color, z = ("#d9480f", 3) if on_front else ("#adb5bd", 2)
        if x_key == "latency_ms_p50":
            err = [
                [max(0.0, p[x_key] - p["latency_ms_ci95"][0]) if p.get("latency_ms_ci95") else 0 for p in sel],
                [max(0.0, p["latency_ms_ci95"][1] - p[x_key]) if p.get("latency_ms_ci95") else 0 for p in sel],
            ]
            ax.errorbar(xs, ys, xerr=err, fmt="none", ecolor=color, elinewidth=1, capsize=2, zorder=z)
        ax.scatter(
            xs, ys, s=36 if on_front else 22, c=color, zorder=z + 1, label="Pareto front" if on_front else "dominated"
        )
        if on_front:
            ordered = sorted(sel, key=lambda p: p[x_key])
            ax.plot(
                [p[x_key] for p in ordered],
                [100 * p["accuracy_top1"] for p in ordered],
                color=color,
                lw=1,
                alpha=0.6,
                zorder=z,
            )
    ax.margins(x=0.12, y=0.15)  # keep edge points clear of the frame and the legend
    if _span_is_wide([p[x_key] for p in pts]):
        ax.set_xscale("log")
    ax.set(xlabel=x_label, ylabel="top-1 accuracy (%)")
    ax.set_title(title, parse_math=False)
    ax.grid(alpha=0.3)
    ax.autoscale_view()
    fig.tight_layout()  # the label offsets are worked out on the final layout
    for text, p, dy in _label_blocks(ax, [p for p in pts if p.get(front_key)], x_key):
        # User strings are drawn as plain text (never mathtext); the SVG writer escapes them.
        ax.annotate(
            text,
            (p[x_key], 100 * p["accuracy_top1"]),
            xytext=(4, dy),
            textcoords="offset points",
            va="bottom",
            fontsize=LABEL_PT,
            linespacing=LINE_PT / LABEL_PT,
            parse_math=False,
        )
    if pts:
        ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return _svg(fig)


def _svg(fig) -> str:
    """The figure as SVG markup to inline in HTML (without the XML prolog and DOCTYPE); closes the figure."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


# The training figures are drawn again from training.json's numbers rather than taken from the variant's
# SVG files: a file in a workspace is not markup the report can trust (an appended <script> would run).
def learning_curves_svg(history: list[dict]) -> str:
    """`train.plots.learning_curves_figure` as inline SVG markup."""
    return _svg(learning_curves_figure(history))


def confusion_svg(confusion: list[list[int]], classes: list[str]) -> str:
    """`train.plots.confusion_figure` as inline SVG markup."""
    return _svg(confusion_figure(confusion, classes))
