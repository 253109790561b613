"""results.json and results.md from the figures: medians, ratios syn_mp/peer, goals."""
from __future__ import annotations

import json
import os
from typing import Any, Callable

from . import stats
from .figures import Figure

PEERS = ["dict", "ultradict", "manager", "redis", "syn", "syn1"]
SYNS = ("syn", "syn1")  # Syn with its default schedulers and with +S 1: goals hold against the faster
NOISY = 0.30  # a figure whose repetitions spread more than this (max-min over median) is flagged


def _v(f: Figure, k: str) -> float | None:
    return f.median(k)


def _check(f: Figure) -> tuple[bool | None, str]:
    """Whether the goal of a figure is met: (met, how); None when it has no goal or no data."""
    s = _v(f, "syn_mp")
    if f.pending or s is None:
        return None, ""
    parts: list[tuple[bool | None, str]] = []

    def vs(peer: str, ok: Callable[[float], bool], text: str) -> None:
        r = ratio(f, peer)  # syn_mp / peer, paired by repetition
        if r is None:
            parts.append((None, f"{text}: {PEER_LABELS.get(peer, peer)} not run"))
        else:
            parts.append((ok(r), text))

    def vs_syn(ok: Callable[[float], bool], text: str) -> None:
        """Against the faster Syn (DESIGN.md): the larger of the two ratios."""
        rs = [r for r in (ratio(f, p) for p in SYNS) if r is not None]
        if not rs:
            parts.append((None, f"{text}: Syn not run"))
        else:
            parts.append((ok(max(rs)), f"{text} (the faster Syn)"))

    if f.id == "lookup_str":
        vs("ultradict", lambda r: r <= 1, "<= UltraDict")
        vs("dict", lambda r: r <= 10, "<= 10x dict")
        vs_syn(lambda r: r < 1, "< Syn")
    elif f.id in ("scale_1k", "scale_10k", "scale_100k"):  # DESIGN.md's realistic pattern: names drawn uniformly
        vs("ultradict", lambda r: r <= 1, "<= UltraDict")
        vs_syn(lambda r: r <= 1, "<= Syn")
    elif f.id == "regunreg":
        vs("ultradict", lambda r: r <= 1 / 2, "<= 1/2 UltraDict")
        vs("manager", lambda r: r <= 1 / 50, "50x < Manager")
        vs_syn(lambda r: r <= 1 / 4, "4x < Syn")
    elif f.id == "scale_ratio":
        parts.append((s <= 1.5, "<= 1.5x"))
    elif f.id == "readers_ratio":
        parts.append((s >= 0.70, ">= 0.70"))
    elif f.id in ("stall_stopped_ratio", "stall_throttled_ratio"):
        parts.append((s <= 2.0, "<= 2x"))
    elif f.id in ("stall_stopped_max", "stall_throttled_max"):
        parts.append((s < 1e6, "< 1 ms"))
    elif f.id == "cluster_visible":
        parts.append((s < 1.0, "< 1 ms"))
    elif f.id == "cluster_snapshot":
        parts.append((s < 0.5, "< 0.5 s"))
    elif f.id == "death":
        if s < 0.1:
            return True, "aim (< 0.1 s) met"
        return (s <= 0.5), ("max (0.5 s) met, aim (0.1 s) not" if s <= 0.5 else "over the 0.5 s max")
    else:
        return None, ""
    known = [ok for ok, _ in parts if ok is not None]
    if not known:
        return None, "; ".join(t for _, t in parts)
    met = all(known)
    detail = "; ".join(("yes " if ok else "NO " if ok is False else "") + t for ok, t in parts)
    return met, detail


PEER_LABELS = {"syn_mp": "syn_mp", "dict": "dict", "ultradict": "UltraDict", "manager": "Manager dict",
               "redis": "Redis", "syn": "Syn (Erlang)", "syn1": "Syn +S 1"}


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit in ("ns/op", "ns/pair"):
        if v >= 1e6:
            return f"{v / 1e6:.2f} ms"
        if v >= 1e3:
            return f"{v / 1e3:.2f} µs"
        return f"{v:.0f} ns"
    if unit == "s":
        return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "x":
        return f"{v:.2f}x"
    if unit in ("lookups/s", "pairs/s"):
        if v >= 1e6:
            return f"{v / 1e6:.2f} M/s"
        if v >= 1e3:
            return f"{v / 1e3:.0f} k/s"
        return f"{v:.0f} /s"
    if unit == "%":
        return f"{v:.1f}%"
    if unit == "bytes":
        return f"{v:,.0f} B"
    if unit == "ms":
        return f"{v:.3f} ms"
    return f"{v:.3g}"


def ratio(f: Figure, peer: str) -> float | None:
    """syn_mp / peer: the median over the repetitions of the two values measured in the same repetition
    (moments apart, so a busy spell of this shared machine falls on both); the ratio of the medians
    when the repetitions do not pair up. > 1 means syn_mp's value is the larger."""
    s, p = f.reps.get("syn_mp"), f.reps.get(peer)
    if not s or not p:
        return None
    if len(s) == len(p):
        pairs = [a / b for a, b in zip(s, p) if b]
        return stats.median(pairs) if pairs else None
    ms, mp = stats.median(s), stats.median(p)
    return ms / mp if mp else None


def ratios(f: Figure) -> dict[str, float]:
    out = {}
    for p in PEERS:
        r = ratio(f, p)
        if r is not None:
            out[p] = r
    return out


def to_json(figs: list[Figure], meta: dict[str, Any]) -> dict[str, Any]:
    out = dict(meta)
    out["figures"] = []
    for f in figs:
        met, how = _check(f)
        out["figures"].append({
            "id": f.id, "title": f.title, "unit": f.unit, "better": f.better, "goal": f.goal, "note": f.note,
            "pending": f.pending or None,
            "median": {k: stats.median(v) for k, v in f.reps.items()},
            "spread": {k: stats.spread(v) for k, v in f.reps.items()},
            "reps": f.reps, "na": f.na,
            "ratio_syn_mp_over": ratios(f),
            "met": met, "met_detail": how,
        })
    return out


def _ratio_cell(f: Figure) -> str:
    r = ratios(f)
    if not r:
        return "—"
    if f.id == "lookup_str":
        order = ["ultradict", "dict", "syn", "syn1"]
    elif f.id == "regunreg":
        order = ["ultradict", "manager", "syn", "syn1"]
    elif f.unit == "x":
        return "—"
    else:
        order = [p for p in PEERS if p in r]
    return ", ".join(f"{r[p]:.2g}x {PEER_LABELS[p]}" for p in order if p in r)


HEADLINE = ["lookup_str", "lookup_none", "scale_1k", "scale_10k", "scale_100k", "regunreg", "joinleave", "members", "scale_ratio", "readers_ratio",
            "stall_stopped_ratio", "stall_throttled_ratio", "stall_stopped_max", "stall_throttled_max",
            "death", "cluster_visible", "cluster_snapshot", "memory"]


def _table(figs: list[Figure], meta: dict[str, Any], columns: list[str], noisy: list[str]) -> list[str]:
    """The markdown table of `figs`; cells whose repetitions spread widely get a ± (and go in `noisy`)."""
    lines = []
    head = ["figure", *[PEER_LABELS[c] for c in columns], "ratio syn_mp/peer", "goal", "met?"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for f in figs:
        cells = [f"{f.title}" + (f" ({f.unit})" if f.unit not in ("ns/op", "ns/pair", "s", "x", "bytes", "%") else "")]
        for c in columns:
            if f.pending:
                cells.append("pending")
            elif c in f.reps:
                v = f.median(c)
                sp = stats.spread(f.reps[c])
                flag = ""
                if sp is not None and sp > NOISY:
                    flag = " ±"
                    noisy.append(f"{f.title} / {PEER_LABELS[c]} ({sp:.0%})")
                cells.append(fmt(v, f.unit) + flag)
            elif c in f.na:
                cells.append("not run" if f.na[c].startswith("not run") else "n/a")
            else:
                cells.append("not run" if meta["contenders"].get(c, {}).get("status", "ran") != "ran" else "n/a")
        cells.append(_ratio_cell(f) if not f.pending else "—")
        cells.append(f.goal or "—")
        met, how = _check(f)
        if f.pending:
            cells.append(f.pending.split(":")[0])
        elif met is None:
            cells.append(how if how else "—")
        else:
            cells.append(("**yes**" if met else "**no**") + (f" ({how})" if how else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(figs: list[Figure], meta: dict[str, Any], columns: list[str]) -> str:
    m = meta["machine"]
    lines = ["# syn_mp benchmark results", ""]
    lines.append(f"Command: `{meta['command']}`  ")
    lines.append(f"Run: {meta['started']} to {meta['finished']} ({meta['duration_s']:.0f} s); "
                 f"syn_mp {meta['syn_mp_version']} at {meta['git'] or 'unknown revision'}  ")
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Linux {m['kernel']}, "
                 f"{m['python_impl']} {m['python']}  ")
    la = meta.get("loadavg", {})
    lines.append(f"Load average (1, 5, 15 min) at start {la.get('start')}, at end {la.get('end')}  ")
    cfg = meta["config"]
    lines.append(f"Repetitions: {cfg['reps']} per figure, contenders interleaved (order rotated every "
                 f"repetition); each cell is the median of the repetitions"
                 + (" — **--quick: a smoke run, numbers are not meaningful**" if cfg["quick"] else ""))
    lines.append("")
    lines.append("Contenders:")
    lines.append("")
    for k in ["syn_mp"] + PEERS:
        st = meta["contenders"].get(k)
        if st:
            lines.append(f"- **{st['label']}**: " + (f"{st['version']} — " if st["version"] else "") + st["status"])
    lines.append("")
    lines.append("## Headline: the goals of DESIGN.md")
    lines.append("")
    lines += _table([f for f in figs if f.id in HEADLINE], meta, columns, [])
    lines.append("")
    lines.append("## All figures")
    lines.append("")
    noisy: list[str] = []
    lines += _table(figs, meta, columns, noisy)
    lines.append("")
    lines.append("Ratios (and the goals that compare with a peer) are the median over the repetitions of "
                 "syn_mp's value over the peer's value in the same repetition, measured moments apart: below 1 "
                 "syn_mp takes less time (for throughput figures, above 1 syn_mp does more). n/a: the figure "
                 "has no meaning for that contender (see the notes); not run: the contender could not run here.")
    lines.append("")
    if noisy:
        cells = sum(len(f.reps) for f in figs)
        lines.append(f"± marks the {len(noisy)} of {cells} cells whose repetitions spread more than {NOISY:.0%} "
                     f"of their median (max - min): this 2-core machine was shared with other test runs during "
                     f"the bench (see the load average above), which makes single repetitions noisy; the "
                     f"medians of interleaved repetitions are what to read, and results.json has every "
                     f"repetition.")
        lines.append("")
    lines.append("## How each figure is measured")
    lines.append("")
    lines.append(f"- All timed loops are plain Python `for` loops calling each registry the way its users do "
                 f"(`syn_mp.lookup(scope, name)`, `d.get(name)`, `r.get(name)` + unpickle, ...); one empty "
                 f"loop turn costs {meta['loop_overhead_ns']:.0f} ns here and is included for every contender "
                 f"alike. Every timed lookup loop follows an untimed pass over its first 2,000 names (steady "
                 f"state: caches warm). The garbage collector stays on, as in a real program. Syn's loops run "
                 f"inside its Erlang VM, timed with erlang:monotonic_time; its names are held by one Erlang "
                 f"process each, syn_mp's by 10 helper processes (so the bench process holds only what a "
                 f"loop registers, as a worker would).")
    for f in figs:
        if f.note:
            lines.append(f"- **{f.title}**: {f.note}.")
    for n in meta.get("notes", []):
        lines.append(f"- {n}")
    lines.append("")
    lines.append("Plots: lookup.png, register.png, scale.png, readers_under_writer.png, readers_stalled_writer.png, "
                 "death.png, memory.png. "
                 "Raw repetitions are in results.json.")
    lines.append("")
    return "\n".join(lines)


def write(out_dir: str, figs: list[Figure], meta: dict[str, Any], columns: list[str]) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    j = os.path.join(out_dir, "results.json")
    with open(j, "w") as fh:
        json.dump(to_json(figs, meta), fh, indent=1, default=str)
        fh.write("\n")
    md = os.path.join(out_dir, "results.md")
    with open(md, "w") as fh:
        fh.write(to_markdown(figs, meta, columns))
    return md, j
