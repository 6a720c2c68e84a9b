"""Objects made immortal before they are shared copy-on-write (CPython 3.12 and later).

A user process is forked from the zygote and shares its memory until one of them
writes to a page. CPython keeps a reference count in each object: a process that
only *uses* a shared object (calls a function, reads a class, looks up a module's
dict) writes to it, and the kernel copies the whole page. On Python 3.11, 1.6 MB of
a user's 4.2 MB are pages copied that way whose bytes are the zygote's again once
the counts are back down (bench/RESULTS.md, "What a user's own memory is").

Python 3.12 (PEP 683) leaves the count of an *immortal* object alone: its count
holds a value that no increment or decrement changes. The interpreter makes its own
objects immortal (None, small integers, interned strings, built-in types).
:func:`share` makes every object this process holds when it runs immortal too, then
freezes them out of the garbage collector's reach (``gc.freeze``), just before the
fork-server forks its zygote, and in a zygote that imported an app.

An immortal object is never freed. What :func:`share` marks is kept by every
process for its life: those objects were the fork-server's, shared, and freeing
them in a user process would only have copied their pages. The value and the check
are CPython's own (``Include/object.h``): :func:`supported` checks both on this
interpreter, and :func:`share` only freezes anywhere else (Python 3.11, a
free-threaded build, another implementation, a 32-bit build).
"""

from __future__ import annotations

import ctypes
import gc
import sys
import sysconfig

#: the reference count of an immortal object on 64-bit CPython 3.12 and 3.13 (``_Py_IMMORTAL_REFCNT``)
IMMORTAL = 0xFFFFFFFF


def supported() -> bool:
    """Whether this interpreter keeps immortal objects as :func:`share` marks them."""
    if sys.implementation.name != "cpython" or sys.version_info < (3, 12) or sys.maxsize <= 2**32:
        return False
    if sysconfig.get_config_var("Py_GIL_DISABLED") or sys.getrefcount(None) != IMMORTAL:
        return False
    probe = object()
    _mark(probe)
    held = [probe] * 3
    return sys.getrefcount(probe) == IMMORTAL and len(held) == 3


def share() -> int:
    """Make immortal every object the garbage collector tracks here and not frozen yet, and
    the objects they hold that it does not track (strings, numbers, tuples of them); then
    freeze them. Returns how many were made immortal (0 where not :func:`supported`)."""
    marked = 0
    if supported():
        seen: set[int] = set()
        pending = gc.get_objects()
        while pending:
            obj = pending.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            _mark(obj)
            marked += 1
            pending.extend(held for held in gc.get_referents(obj) if not gc.is_tracked(held) and id(held) not in seen)
    gc.freeze()
    return marked


def _mark(obj: object) -> None:
    count = ctypes.c_ssize_t.from_address(id(obj))
    if count.value != IMMORTAL:  # the interpreter's own: no page written for them
        count.value = IMMORTAL
