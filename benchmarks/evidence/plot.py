"""The accuracy table as grouped bars: one group per setting, one bar per row, ± std over seeds."""

from __future__ import annotations

from collections.abc import Sequence

from evidence.output import plt


def table_figure(report: dict, rows: Sequence[str]) -> plt.Figure:
    table = report["table"]
    settings = list(table)
    colours = {row: plt.cm.tab20(k % 20) for k, row in enumerate(rows)}  # a row's colour in every report
    rows = [row for row in rows if any(row in table[s] for s in settings)]  # bars and legend: rows that ran
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(settings)), 4.5))
    for k, row in enumerate(rows):
        xs = [i + (k - (len(rows) - 1) / 2) * width for i, s in enumerate(settings) if row in table[s]]
        cells = [table[s][row] for s in settings if row in table[s]]
        ax.bar(
            xs,
            [c["mean"] for c in cells],
            width,
            yerr=[c["std"] for c in cells],
            label=row,
            color=colours[row],
            capsize=1.5,
        )
    ax.set_xticks(range(len(settings)), [s.replace("/", "\n") for s in settings], fontsize=8)
    ax.set_ylabel("test score (points): top1, R@1 or mAP")
    ax.set_title(f"graytune accuracy table: {report['seeds']} seed(s), mean ± std")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig
