"""The loop report's figures (matplotlib, as negalign.evaluation.report draws its own)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(entry: dict) -> list[list[float]]:
    return [[entry["rate"] - entry["low"]], [entry["high"] - entry["rate"]]]


def _round_points(ax, rows, harm_key, refusal_of, title):
    for r in rows:
        harm, refusal = r[harm_key], refusal_of(r)
        if not harm or not refusal or harm.get("rate") is None or refusal.get("rate") is None:
            continue
        ax.errorbar([refusal["rate"]], [harm["rate"]], xerr=_bars(refusal), yerr=_bars(harm), fmt="o", capsize=3,
                    color=f"C{r['round'] % 10}", label=f"round {r['round']}")
        ax.annotate(f"r{r['round']}", (refusal["rate"], harm["rate"]), textcoords="offset points", xytext=(6, 5),
                    fontsize=8)
    _finish(ax, title)


def _finish(ax, title):
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("benign refusal")
    ax.set_ylabel("harmful compliance")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")


def plot_front(rows: list[dict], path: Path) -> bool:
    """Three panels: the rounds on the evaluation suites, the rounds on the reach check (its harmful suites
    pooled against reach-context-benign), and every watch point of every round (kept checkpoints filled)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    _round_points(axes[0], rows, "harmful_compliance", lambda r: r["benign_refusal"],
                  "evaluation suites (Wilson 95 %)\nbottom left is best")
    _round_points(axes[1], rows, "reach_harmful", lambda r: r["reach"].get("reach-context-benign"),
                  "reach check: harmful suites pooled vs\nreach-context-benign refusal")
    for r in rows:
        for p in r["watch"]:
            kept = p["step"] in r["kept_checkpoints"]
            axes[2].plot(p["benign_refusal"], p["harmful_compliance"], "o", color=f"C{r['round'] % 10}",
                         fillstyle="full" if kept else "none", markersize=6)
            if kept:
                axes[2].annotate(f"r{r['round']}@{p['step']}", (p["benign_refusal"], p["harmful_compliance"]),
                                 textcoords="offset points", xytext=(5, 4), fontsize=7)
    _finish(axes[2], "watch slice: every checkpoint scored\n(filled: kept, on the round's front)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_watch(rows: list[dict], path: Path) -> bool:
    """Harmful compliance and benign refusal on the watch slice against training steps, the rounds end to end."""
    if not any(r["watch"] for r in rows):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    offset = 0
    for r in rows:
        points = sorted(r["watch"], key=lambda p: p["step"])
        if not points:
            continue
        steps = [offset + p["step"] for p in points]
        ax.plot(steps, [p["harmful_compliance"] for p in points], "-o", color="C3", markersize=3,
                label="harmful compliance" if offset == 0 else None)
        ax.plot(steps, [p["benign_refusal"] for p in points], "-s", color="C0", markersize=3,
                label="benign refusal" if offset == 0 else None)
        offset = steps[-1]
        ax.axvline(offset, color="grey", alpha=0.3)
    ax.set_xlabel("training step (rounds end to end)")
    ax.set_ylabel("rate on the watch slice")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
