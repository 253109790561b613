"""`python -m bench`: syn_mp against a plain dict, UltraDict, multiprocessing.Manager().dict(),
Redis and (given a checkout and Erlang) Syn, side by side in one run.

  python -m bench [--quick] [--syn-path PATH] [--out DIR]

Writes DIR/results.md, DIR/results.json and DIR/*.png (DIR: bench/results).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions: a smoke run (< 30 s)")
    p.add_argument("--syn-path", metavar="PATH",
                   help="a checkout of Erlang Syn: built in a temp dir and run (needs Erlang: erl, erlc)")
    p.add_argument("--out", metavar="DIR", default=os.path.join(HERE, "results"),
                   help="where results.md, results.json and the plots go (default: bench/results)")
    p.add_argument("--reps", type=int, help="repetitions of every figure (default: 7; --quick: 3)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: write results.md and the plots again from DIR/results.json")
    p.add_argument("--no-diagnose", action="store_true",
                   help="skip bench/diagnose.py (component timings and profiles: diagnostics.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # the bench's own modules and syn_mp from this checkout
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from . import machine, report
    from .figures import Bench, Config

    columns = ["syn_mp", "dict", "ultradict", "manager", "redis", "syn", "syn1"]
    if args.render_only:
        return _render(args.out, columns, args.no_plots)
    cfg = Config.make(args.quick)
    if args.reps:
        cfg.reps = max(1, args.reps)
    cmd = "python -m bench" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))

    def log(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    started = time.time()
    load_start = machine.loadavg()
    bench = Bench(cfg, args.syn_path, log)
    try:
        log("starting the contenders and filling their tables")
        bench.start()
        for k, st in bench.status.items():
            log(f"  {st['label']}: {st['version'] or ''} {st['status']}")
        figs = bench.run()
    finally:
        bench.close()
    finished = time.time()
    import syn_mp
    m = machine.describe()
    meta = {
        "command": cmd,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(finished)),
        "duration_s": finished - started,
        "machine": m,
        "loadavg": {"start": load_start, "end": machine.loadavg()},
        "git": machine.git_rev(ROOT),
        "syn_mp_version": syn_mp.__version__,
        "config": vars(cfg),
        "contenders": bench.status,
        "timer_overhead_ns": bench.timer_ns,
        "loop_overhead_ns": bench.loop_ns,
        "notes": bench.notes,
    }
    md, js = report.write(args.out, figs, meta, columns)
    log(f"wrote {md} and {js}")
    if not args.no_plots:
        _plots(args.out, figs, columns, m, log)
    if not args.no_diagnose:
        from . import diagnose
        log(f"wrote {diagnose.write(args.out, cfg.quick, log)}")
    log(f"done in {time.time() - started:.0f} s")
    return 0


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _plots(out: str, figs: list, columns: list[str], m: dict, log=_log) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("no plots: matplotlib is not installed (pip install '.[bench]')")
        return
    from . import plots
    label = f"{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}"
    for p in plots.write(out, figs, columns, label):
        log(f"wrote {p}")


def _render(out: str, columns: list[str], no_plots: bool) -> int:
    """results.md and the plots again from results.json (after a change to the report or the plots)."""
    import json
    from . import report
    from .figures import Figure
    with open(os.path.join(out, "results.json")) as f:
        doc = json.load(f)
    figs = [Figure(d["id"], d["title"], d["unit"], d["better"], reps=d["reps"], na=d["na"], goal=d["goal"],
                   note=d["note"], pending=d["pending"] or "") for d in doc.pop("figures")]
    md, js = report.write(out, figs, doc, columns)
    _log(f"wrote {md} and {js}")
    if not no_plots:
        _plots(out, figs, columns, doc["machine"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
