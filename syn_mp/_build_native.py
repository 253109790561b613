"""cffi (API mode) build of csrc/ into ``syn_mp._native``; setup.py runs it via cffi_modules."""
from __future__ import annotations

import os
import re

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
_CSRC = os.path.join(os.path.dirname(_HERE), "csrc")


def _cdef_from_header(path: str) -> str:
    """The header is the one declaration of the C API: bind exactly what it declares.

    cffi's parser takes no preprocessor lines except ``#define NAME ...`` (filled in by
    the compiler in API mode), so include guards and includes are dropped.
    """
    out = []
    for line in open(path, encoding="utf-8"):
        stripped = line.strip()
        m = re.match(r"#define\s+(SYNT_\w+)\s+\S", stripped)
        if m:
            out.append(f"#define {m.group(1)} ...")
        elif not stripped.startswith("#"):
            out.append(line.rstrip("\n"))
    text = "\n".join(out)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header(os.path.join(_CSRC, "table.h")))
ffibuilder.set_source(
    "syn_mp._native",
    '#include "table.h"',
    sources=[os.path.relpath(os.path.join(_CSRC, f)) for f in ("table.c", "rows.c", "plain.c")],
    # the engine's units are headers included by table.c: a change to one rebuilds it
    depends=sorted(os.path.relpath(os.path.join(_CSRC, f)) for f in os.listdir(_CSRC) if f.endswith(".h")),
    include_dirs=[os.path.relpath(_CSRC)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
