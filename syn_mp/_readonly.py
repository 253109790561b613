"""Read-only metas: what lets `lookup` and `members` hand every caller the same meta object.

A cache hit used to give each caller its own `dict.copy()` of the meta, so that no caller could
change what another one, or the next lookup, sees. Among many names that copy is most of a hit's
time (the meta, its keys and its values each lie at a random address). A meta that cannot be
changed needs no copy: as in Syn, where a meta is an immutable Erlang term, every caller shares one.
A dict meta is therefore returned as a `ReadOnlyDict`: a real dict (json, msgpack, `==`,
`isinstance(m, dict)` and every read work as before) whose mutators raise; `dict(meta)` is a
mutable copy. A meta holding a list can't be frozen without changing its type, so it is still
copied per caller.
"""
from __future__ import annotations

import copy
from typing import Any, NoReturn

from .codec import _META_SCALARS as _SCALARS  # the types a meta's leaves can be


class ReadOnlyDict(dict):
    """A dict meta shared by every caller of lookup/members: reads as a dict, refuses changes."""
    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("this meta is shared by every caller of lookup/members and is read-only; "
                        "dict(meta) gives a copy you can change")

    __setitem__ = __delitem__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse
    __ior__ = _refuse

    # copies and pickles are plain, mutable dicts (the default protocol would rebuild this class
    # item by item through the refused __setitem__)
    def __copy__(self) -> dict:
        return dict(self)

    def __deepcopy__(self, memo: dict) -> dict:
        return {copy.deepcopy(k, memo): copy.deepcopy(v, memo) for k, v in self.items()}

    def __reduce__(self) -> tuple:
        return (dict, (dict(self),))


def _make(d: dict) -> ReadOnlyDict:
    r = ReadOnlyDict()
    dict.update(r, d)  # the C method: ours refuses
    return r


def freeze(v: Any) -> tuple[bool, Any]:
    """(True, an immutable equal of v) when there is one (scalars, tuples of them, dicts of them:
    dicts become ReadOnlyDict); (False, None) when v holds something mutable (a list)."""
    t = type(v)
    if t in _SCALARS or t is ReadOnlyDict:
        return True, v
    if t is tuple:
        out = []
        for x in v:
            ok, fx = freeze(x)
            if not ok:
                return False, None
            out.append(fx)
        return True, tuple(out)
    if t is dict:
        d = {}
        for k, x in v.items():
            ok, fx = freeze(x)
            if not ok:
                return False, None
            d[k] = fx
        return True, _make(d)
    return False, None
