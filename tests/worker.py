"""A worker process for the tests: reads `(fn, args, kwargs)` literals on stdin, runs syn_mp.fn,
answers `("ok", result)` or `("error", (exception class, message))` on stdout."""
from __future__ import annotations

import ast
import os
import sys

import syn_mp

EXTRA = {"getpid": os.getpid}


def plain(v: object) -> object:
    """Named tuples (Pid) as plain tuples, so the reply is a Python literal; Pid == tuple still holds."""
    if isinstance(v, tuple):
        return tuple(plain(x) for x in v)
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {plain(k): plain(x) for k, x in v.items()}
    return v


def revive(v: object) -> object:
    """The test side sends a Pid as ("__Pid__", node, pid)."""
    if isinstance(v, tuple):
        if len(v) == 3 and v[0] == "__Pid__":
            return syn_mp.Pid(v[1], v[2])
        return tuple(revive(x) for x in v)
    if isinstance(v, list):
        return [revive(x) for x in v]
    if isinstance(v, dict):
        return {revive(k): revive(x) for k, x in v.items()}
    return v


def main() -> None:
    for line in sys.stdin:
        fn, args, kwargs = revive(ast.literal_eval(line))
        try:
            f = EXTRA.get(fn) or getattr(syn_mp, fn)
            reply = ("ok", plain(f(*args, **kwargs)))
        except Exception as e:  # the test side re-raises it
            reply = ("error", (type(e).__name__, str(e)))
        print(repr(reply), flush=True)


if __name__ == "__main__":
    main()
