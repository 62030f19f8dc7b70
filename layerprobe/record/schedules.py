"""Schedules: plain ``Callable[[int], bool]`` saying whether to record at an optimizer step (1 = the first)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Schedule = Callable[[int], bool]


def every(n: int = 1, offset: int = 0) -> Schedule:
    """Record at steps n, 2n, 3n, ... (shifted by ``offset``); every(1) is each step."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"a schedule needs an interval of at least 1 step, got every={n!r}; use every=1 for each step")

    def schedule(step: int) -> bool:
        return step > offset and (step - offset) % n == 0

    schedule.__name__ = f"every({n})"
    return schedule


def logspaced(max_step: int, count: int = 50) -> Schedule:
    """At most ``count`` steps spaced logarithmically from 1 to ``max_step`` (dense early, sparse late)."""
    if count < 1 or max_step < 1:
        raise ValueError(f"logspaced needs max_step >= 1 and count >= 1, got max_step={max_step}, count={count}")
    steps = set(np.unique(np.round(np.logspace(0, np.log10(max_step), count)).astype(int)).tolist())

    def schedule(step: int) -> bool:
        return step in steps

    schedule.__name__ = f"logspaced({max_step}, {count})"
    return schedule


def parse_schedule(spec: int | str | Schedule, max_steps: int | None = None) -> Schedule:
    """Accept a schedule, an interval (``10``), ``"every:10"``, ``"log:50"`` or ``"never"``."""
    if callable(spec):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"expected a schedule such as 1, 'every:10' or 'log:50', got {spec!r}")
    if isinstance(spec, int):
        return every(spec)
    s = str(spec).strip()
    if s == "never":
        return lambda step: False
    kind, _, arg = s.partition(":")
    try:
        if kind.isdigit():
            return every(int(kind))
        if kind == "every":
            return every(int(arg))
        if kind == "log":
            if not max_steps:
                raise ValueError("log schedules need the number of training steps")
            return logspaced(max_steps, int(arg or 50))
    except ValueError as e:
        raise ValueError(f"bad schedule {spec!r}: {e}") from None
    raise ValueError(f"unknown schedule {spec!r}: expected an interval like 10, 'every:10', 'log:50' or 'never'")
