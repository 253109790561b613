"""PNG plots of the figures (matplotlib, Agg backend): grouped bars, median with min-max whiskers."""
from __future__ import annotations

import os

from . import stats
from .figures import Figure
from .report import PEER_LABELS, fmt

COLORS = {"syn_mp": "#d62728", "dict": "#7f7f7f", "ultradict": "#1f77b4", "manager": "#9467bd",
          "redis": "#ff7f0e", "syn": "#2ca02c", "syn1": "#98df8a"}


def _bars(ax, figs: list[Figure], columns: list[str], log: bool = True, labels: list[str] | None = None) -> None:
    import numpy as np
    cols = [c for c in columns if any(c in f.reps for f in figs)]
    x = np.arange(len(figs))
    width = 0.8 / max(1, len(cols))
    tops: list[float] = []
    for i, c in enumerate(cols):
        med, lo, hi = [], [], []
        for f in figs:
            r = f.reps.get(c)
            m = stats.median(r) if r else None
            med.append(m if m is not None else np.nan)
            lo.append(m - min(r) if r else 0)
            hi.append(max(r) - m if r else 0)
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, med, width, yerr=[lo, hi], capsize=2, label=PEER_LABELS[c], color=COLORS.get(c),
               error_kw={"elinewidth": 0.8})
        for p, m, h, f in zip(pos, med, hi, figs):
            if m == m:  # not NaN
                top = m + h
                tops.append(top)
                ax.text(p, top * (1.08 if log else 1.0), fmt(m, f.unit), ha="center", va="bottom", fontsize=6,
                        rotation=90)
    ax.set_xticks(x)
    ax.set_xticklabels(labels or [f.title for f in figs], fontsize=8)
    if log:
        ax.set_yscale("log")
        if tops:
            ax.set_ylim(top=max(tops) * 30)  # room for the labels and the legend
    elif tops:
        ax.set_ylim(top=max(tops) * 1.35)
    ax.legend(fontsize=7, ncols=min(len(cols), 6), loc="upper left")
    ax.grid(axis="y", alpha=0.3)


def write(out_dir: str, figs: list[Figure], columns: list[str], machine: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_id = {f.id: f for f in figs}
    written = []

    def save(fig, name: str) -> None:
        fig.text(0.99, 0.005, machine, ha="right", va="bottom", fontsize=6, color="#555")
        fig.tight_layout(rect=(0, 0.02, 1, 1))
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    def pick(*ids: str) -> list[Figure]:
        return [by_id[i] for i in ids if i in by_id]

    # lookup latency
    fs = pick("lookup_str", "lookup_tuple", "lookup_none", "lookup_after_other", "lookup_uncached")
    if fs:
        fig, ax = plt.subplots(figsize=(10, 5))
        _bars(ax, fs, columns, labels=["str name", "tuple name", "str name, meta None", "after a write elsewhere",
                                         "of a name just changed"])
        ax.set_ylabel("ns per lookup (log)")
        ax.set_title("lookup latency (median of repetitions; whiskers: min-max)")
        save(fig, "lookup.png")

    # writes and groups
    fs = pick("regunreg", "joinleave", "members")
    if fs:
        fig, ax = plt.subplots(figsize=(10, 5))
        _bars(ax, fs, columns, labels=["register + unregister", "join + leave", fs[-1].title])
        ax.set_ylabel("ns per pair / per call (log)")
        ax.set_title("writes and groups")
        save(fig, "register.png")

    # scale
    fs = pick("scale_1k", "scale_10k", "scale_100k", "scale_uncached_1k", "scale_uncached_100k")
    if fs:
        fig, ax = plt.subplots(figsize=(10, 5))
        _bars(ax, fs, columns, labels=[f.title.replace("lookup among", "among") for f in fs])
        ax.set_ylabel("ns per lookup (log)")
        r = by_id.get("scale_ratio")
        sm = r.median("syn_mp") if r else None
        ax.set_title("lookup vs table size" + (f" — syn_mp 100k/1k: {sm:.2f}x (goal <= 1.5x)" if sm else ""))
        save(fig, "scale.png")

    # readers under a writer
    fs = pick("readers_idle", "readers_loaded")
    if fs:
        fig, ax = plt.subplots(figsize=(10, 5))
        _bars(ax, fs, columns, labels=["no writer", "a writer writing flat out"])
        ax.set_ylabel("reader lookups per second (log)")
        r = by_id.get("readers_ratio")
        if r:
            parts = [f"{PEER_LABELS[c]} {r.median(c):.2f}" for c in columns if r.median(c) is not None]
            ax.set_title("reader throughput; kept under the writer: " + ", ".join(parts) + " (goal >= 0.70)",
                         fontsize=9)
        save(fig, "readers_under_writer.png")

    # readers behind a stalled writer: syn_mp only, one bar per writer state
    runs = [("idle", "no writer", "#c7c7c7"), ("free", "writer unthrottled", "#7f7f7f"),
            ("stopped", "writer SIGSTOPped mid-write", "#d62728"),
            ("throttled", "writer under a 2 ms / 100 ms CPU quota", "#1f77b4")]
    runs = [r for r in runs if by_id.get(f"stall_{r[0]}_p50") and by_id[f"stall_{r[0]}_p50"].reps.get("syn_mp")]
    if runs:
        import numpy as np
        qs = [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max"), ("cpumax", "max CPU time")]
        fig, ax = plt.subplots(figsize=(10, 5))
        x = np.arange(len(qs))
        width = 0.8 / len(runs)
        for i, (run, label, color) in enumerate(runs):
            reps = [by_id[f"stall_{run}_{q}"].reps.get("syn_mp", []) for q, _ in qs]
            med = [stats.median(r) / 1e3 for r in reps]
            lo = [m - min(r) / 1e3 for m, r in zip(med, reps)]
            hi = [max(r) / 1e3 - m for m, r in zip(med, reps)]
            pos = x - 0.4 + width * (i + 0.5)
            ax.bar(pos, med, width, yerr=[lo, hi], capsize=2, label=label, color=color, error_kw={"elinewidth": 0.8})
            for p, m, h in zip(pos, med, hi):
                ax.text(p, (m + h) * 1.08, f"{m:.1f} µs" if m < 1000 else f"{m / 1e3:.2f} ms", ha="center",
                        va="bottom", fontsize=7, rotation=90)
        ax.axhline(1000, color="#c33", ls="--", lw=0.8)
        ax.text(1.5, 1000, "max goal 1 ms", fontsize=7, va="bottom", ha="center", color="#c33")  # over low bars
        ax.set_xticks(x)
        ax.set_xticklabels([name for _, name in qs])
        ax.set_yscale("log")
        ax.set_ylim(top=max(5000.0, ax.get_ylim()[1] * 8))
        ax.set_ylabel("µs per lookup, each timed alone, uncached (log)")
        parts = []
        for run, label, _ in runs:
            r = by_id.get(f"stall_{run}_ratio")
            m = r.median("syn_mp") if r else None
            if m is not None:
                parts.append(f"{run} {m:.2f}x")
        ax.set_title("syn_mp lookup latency in a reader, by what a writer of the same table does "
                     + ("(p99.9 / unthrottled: " + ", ".join(parts) + "; goal <= 2x)" if parts else ""), fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
        save(fig, "readers_stalled_writer.png")

    # death
    f = by_id.get("death")
    if f and f.reps:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        cols = [c for c in columns if c in f.reps]
        floor = by_id.get("death_exit")
        for i, c in enumerate(cols):
            ys = [v * 1e3 for v in f.reps[c]]
            ax.scatter([i] * len(ys), ys, color=COLORS.get(c), alpha=0.7, s=18)
            m = stats.median(ys)
            ax.hlines(m, i - 0.25, i + 0.25, color=COLORS.get(c))
            ax.text(i + 0.28, m, f"{m:.1f} ms", va="center", fontsize=8)
            fl = floor.median(c) if floor else None
            if fl:
                fl *= 1e3
                ax.scatter([i - 0.12], [fl], marker="_", s=300, color="black")
                ax.text(i - 0.3, fl * 0.82, f"kernel: all exited\n{fl:.1f} ms", ha="center", va="top", fontsize=7)
        ax.axhline(100, color="#999", ls="--", lw=0.8)
        ax.text(len(cols) - 0.5, 100, "aim 100 ms", fontsize=7, va="bottom", ha="right", color="#666")
        ax.axhline(500, color="#c33", ls="--", lw=0.8)
        ax.text(len(cols) - 0.5, 500, "max 500 ms", fontsize=7, va="bottom", ha="right", color="#c33")
        ax.set_xticks(range(len(cols)))
        kinds = {"syn_mp": "\n(500 OS processes)", "syn": "\n(500 Erlang processes)", "syn1": "\n(500 Erlang processes)"}
        ax.set_xticklabels([PEER_LABELS[c] + kinds.get(c, "") for c in cols])
        ax.set_xlim(-0.5, len(cols) - 0.3)
        ax.set_yscale("log")
        ax.set_ylabel("ms until registry_count == 0 (log)")
        ax.set_title(f.title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        save(fig, "death.png")

    # memory
    f = by_id.get("memory")
    if f and f.reps:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        _bars(ax, [f], columns, labels=[f.title])
        ax.set_ylabel("bytes per entry (log)")
        ax.set_title("memory per entry")
        save(fig, "memory.png")
    return written
