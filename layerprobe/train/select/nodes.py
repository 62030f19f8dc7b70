"""The selector AST: ``Selector`` nodes (blocks, modules, layers, budgets, regexes, and their negation,
intersection and union), each checked at construction and rendered back to canonical selector text.

See :mod:`layerprobe.train.select` for the grammar; :mod:`layerprobe.train.select.grammar` parses text into these nodes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from layerprobe.core.names import BLOCKS


class Selector:
    """Base of the selector AST; ``a + b``, ``a & b`` and ``~a`` build unions, intersections and negations."""

    def __add__(self, other: Selector) -> Selector:
        return Or((*(self.operands if isinstance(self, Or) else (self,)), other))

    def __and__(self, other: Selector) -> Selector:
        return And((*(self.operands if isinstance(self, And) else (self,)), other))

    def __invert__(self) -> Selector:
        return Not(self)


@dataclass(frozen=True)
class Block(Selector):
    name: str

    def __post_init__(self):
        if self.name not in BLOCKS:
            raise ValueError(f"expected a block name, one of {', '.join(BLOCKS)}; got {self.name!r}")

    def __str__(self):
        return self.name


@dataclass(frozen=True)
class All(Selector):
    def __str__(self):
        return "all"


@dataclass(frozen=True)
class Modules(Selector):
    names: tuple[str, ...]

    def __post_init__(self):
        names = tuple(sorted(set(self.names)))
        bad = [n for n in names if not re.fullmatch(r"\w+", n)]
        if not names or bad:
            raise ValueError(
                f"module: expects comma-separated leaf module names such as module:q_proj,v_proj; "
                f"got {','.join(self.names)!r}"
            )
        object.__setattr__(self, "names", names)

    def __str__(self):
        return "module:" + ",".join(self.names)


@dataclass(frozen=True)
class Layers(Selector):
    indices: tuple[int, ...]

    def __post_init__(self):
        idx = tuple(sorted(set(self.indices)))
        if not idx or any(not isinstance(i, int) or i < 0 for i in idx):
            raise ValueError(f"layers: expects layer indices >= 0 such as layers:0-3,10; got {self.indices!r}")
        object.__setattr__(self, "indices", idx)

    def __str__(self):
        return "layers:" + _ranges(self.indices)


@dataclass(frozen=True)
class Budget(Selector):
    """``first``/``last``/``random`` whole layers: ``amount`` percent of all parameters, or a layer count."""

    end: str
    amount: float
    percent: bool = True
    seed: int | None = None

    def __post_init__(self):
        if self.end not in ("first", "last", "random"):
            raise ValueError(f"a budget takes layers from 'first', 'last' or 'random'; got {self.end!r}")
        if self.percent:
            if not (isinstance(self.amount, (int, float)) and math.isfinite(self.amount) and 0 < self.amount <= 100):
                raise ValueError(
                    f"{self.end}: expects a share of all parameters in (0, 100] %, such as "
                    f"{self.end}:10%; got {self.amount!r}"
                )
            object.__setattr__(self, "amount", float(self.amount))
        elif not (isinstance(self.amount, int) and self.amount >= 1):
            raise ValueError(
                f"{self.end}: expects a percentage (10%) or a whole number of layers >= 1; got {self.amount!r}"
            )
        if self.end == "random" and not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(
                f"random: needs a seed >= 0 so the choice can be repeated, such as "
                f"random:10%@seed=0; got seed={self.seed!r}"
            )
        if self.end != "random" and self.seed is not None:
            raise ValueError(f"only random: takes a seed; write {self.end}:{self._amount()} without @seed=")

    def _amount(self) -> str:
        if not self.percent:
            return str(self.amount)
        s = f"{self.amount:g}"
        return (s if float(s) == self.amount else repr(self.amount)) + "%"

    def __str__(self):
        return f"{self.end}:{self._amount()}" + (f"@seed={self.seed}" if self.seed is not None else "")


@dataclass(frozen=True)
class Regex(Selector):
    pattern: str
    compiled: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(
                f"regex: expects a pattern, such as regex:'layers\\.[0-3]\\..*q_proj'; got {self.pattern!r}"
            )
        try:
            object.__setattr__(self, "compiled", re.compile(self.pattern))
        except re.error as e:
            raise ValueError(f"regex: expects a Python regular expression; {self.pattern!r} is not one ({e})") from None
        if self._quote() is None:
            raise ValueError(
                f"regex pattern {self.pattern!r} holds both quote characters and needs quoting; "
                "write one of them as \\x27 or \\x22"
            )

    def _quote(self) -> str | None:
        """'' when the pattern can be written bare, else the quote character to wrap it in."""
        if self.pattern[0] not in "'\"" and scan_regex(self.pattern + ")", 0, self.pattern)[1] == len(self.pattern):
            return ""
        return next((q for q in "'\"" if q not in self.pattern), None)

    def __str__(self):
        q = self._quote()
        return f"regex:{q}{self.pattern}{q}"


@dataclass(frozen=True)
class Not(Selector):
    operand: Selector

    def __post_init__(self):
        if not isinstance(self.operand, Selector):
            raise ValueError(f"Not expects a selector; got {self.operand!r}")

    def __str__(self):
        return "not " + _render(self.operand, 3)


@dataclass(frozen=True)
class And(Selector):
    operands: tuple[Selector, ...]

    def __post_init__(self):
        _check_operands(self)

    def __str__(self):
        return " & ".join(_render(o, 3) for o in self.operands)


@dataclass(frozen=True)
class Or(Selector):
    operands: tuple[Selector, ...]

    def __post_init__(self):
        _check_operands(self)

    def __str__(self):
        return " + ".join(_render(o, 2) for o in self.operands)


_PRECEDENCE = {Or: 1, And: 2, Not: 3}


def _check_operands(node):
    ops = node.operands
    if not isinstance(ops, tuple) or len(ops) < 2 or not all(isinstance(o, Selector) for o in ops):
        raise ValueError(f"{type(node).__name__} expects a tuple of at least two selectors; got {ops!r}")


def _render(node: Selector, at_least: int) -> str:
    return str(node) if _PRECEDENCE.get(type(node), 4) >= at_least else f"({node})"


def _ranges(indices: Iterable[int]) -> str:
    out, idx = [], sorted(indices)
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        out.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ",".join(out)


def scan_regex(text: str, start: int, spec: str) -> tuple[str, int]:
    """The pattern of a ``regex:`` term starting at ``start`` and the index just after it."""
    if start < len(text) and text[start] in "'\"":
        end = text.find(text[start], start + 1)
        if end < 0:
            raise ValueError(
                f"regex: quote {text[start]} opened at position {start} of {spec!r} is never closed; "
                "close it or write the pattern without quotes"
            )
        return text[start + 1 : end], end + 1
    depth, in_class, j = 0, False, start
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c.isspace():
            break
        elif c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                break
            depth -= 1
        j += 1
    j = min(j, len(text))
    return text[start:j], j
