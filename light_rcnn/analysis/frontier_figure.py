"""The frontier picture (``frontier.png`` of :mod:`light_rcnn.analysis.frontier`), drawn with matplotlib's Agg."""
import math

# Labels closer than this (fraction of the axis height) at overlapping x are moved apart.
LABEL_GAP = 0.045
COLORS = ["#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2", "#9c755f", "#edc948", "#ff9da7",
          "#bab0ac", "#1b9e77", "#7570b3"]


def spread_labels(points, y_range, x_range, gap=LABEL_GAP, label_width=0.35):
    """Label heights for points ``[(x, y)]``: from the top down, a label that would sit within
    ``gap * y_range`` of an already placed one whose x is within ``label_width * x_range`` goes
    below it. Returns the heights in the input order."""
    order = sorted(range(len(points)), key=lambda i: -points[i][1])
    placed, heights = [], [0.0] * len(points)
    for i in order:
        x, y = points[i]
        for px, py in sorted(placed, key=lambda p: -p[1]):
            if abs(x - px) < label_width * x_range and abs(y - py) < gap * y_range:
                y = py - gap * y_range
        placed.append((x, y))
        heights[i] = y
    return heights


def draw_points(plotted, front, metric, where, path):
    """Write the PNG. ``plotted``: ``[(label, (x, y, std, x_best, y_best), best_name)]`` (eager p50 and
    mean AP with its std over seeds; the fastest exported runtime or ``None``), ``front``: Pareto
    points ``[(x, y)]`` fastest first, ``where``: the latency settings for the x label."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(9, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ys = [p[1] for _, p, _ in plotted] + [p[4] for _, p, _ in plotted if p[3] is not None]
    xs = [p[0] for _, p, _ in plotted] + [p[3] for _, p, _ in plotted if p[3] is not None]
    heights = spread_labels([(p[0], p[1]) for _, p, _ in plotted], (max(ys) - min(ys)) or 1.0, max(xs)) if plotted else []
    for i, (label, (x, y, std, xb, yb), best_name) in enumerate(plotted):
        c = COLORS[i % len(COLORS)]
        ax.errorbar([x], [y], yerr=[std] if math.isfinite(std) else None, fmt="o", color=c, ms=7, capsize=4, zorder=3)
        moved = abs(heights[i] - y) > 1e-9
        ax.annotate(label, (x, y), xytext=(x + 0.015 * max(xs), heights[i]), textcoords="data", fontsize=8, color=c,
                    xycoords="data", va="bottom", ha="left", annotation_clip=False,
                    arrowprops=dict(arrowstyle="-", color=c, lw=0.6) if moved else None)
        if xb is not None:
            ax.plot([x, xb], [y, yb], "--", color=c, lw=1.2, zorder=2)
            ax.plot([xb], [yb], "D", color=c, ms=6, mfc="white", mew=1.8, zorder=3)
            ax.annotate(f"{best_name} {xb:.1f} ms", (xb, yb), xytext=(-6, -12), textcoords="offset points",
                        fontsize=7, color=c, ha="right")
    if front:
        fx, fy = [p[0] for p in front], [p[1] for p in front]
        ax.step(fx + [max(fx) * 1.1], fy + [fy[-1]], where="post", color="0.55", lw=1, ls=":", zorder=1)
    if plotted:
        ax.set_xlim(0, max(xs) * 1.3)
        ax.legend(handles=[Line2D([], [], marker="o", color="0.3", ls="", label="eager (error bar: std over seeds)"),
                           Line2D([], [], marker="D", color="0.3", mfc="white", ls="--",
                                  label="fastest exported runtime (AP + its ΔAP vs eager)"),
                           Line2D([], [], color="0.55", ls=":", label="Pareto frontier")],
                  fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    else:
        ax.text(0.5, 0.5, f"no config has both a {metric} AP summary and a latency", ha="center",
                transform=ax.transAxes)
    ax.set_xlabel("latency per image, p50 (ms)" + (f"  [{where}]" if where else ""), fontsize=9)
    ax.set_ylabel(f"{metric} AP (COCO, mean over seeds)")
    ax.set_title(f"Speed-accuracy frontier: {metric} AP vs latency", fontsize=11)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
