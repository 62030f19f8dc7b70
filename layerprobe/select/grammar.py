"""The selector grammar: the AST (``Selector`` nodes, rendered back to canonical text) and the parser.

See :mod:`layerprobe.select` for the grammar itself. Nothing here looks at a model.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NoReturn

from layerprobe.names import BLOCKS

_PREFIXES = ("module:", "layers:", "first:", "last:", "random:", "regex:")
_EXPECTED = (
    "expected one of embed, attn, mlp, norm, head, other, all, module:NAME,..., layers:0-3,10, "
    "first:N%, last:N%, random:N%@seed=S, regex:PATTERN, joined with + (union), & (intersection), "
    "not, ( )"
)


# ---------------------------------------------------------------------------------------------- the AST


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
        if self.pattern[0] not in "'\"" and _scan_regex(self.pattern + ")", 0, self.pattern)[1] == len(self.pattern):
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


# ---------------------------------------------------------------------------------------------- parsing


def parse_selector(spec: str | Selector) -> Selector:
    """Parse a selector string (see the module docstring); ``str()`` of the result parses back to it."""
    if isinstance(spec, Selector):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"expected a selector string such as 'mlp+head' or 'first:10%'; got {spec!r}")
    return _Parser(spec).parse()


def _scan_regex(text: str, start: int, spec: str) -> tuple[str, int]:
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


class _Parser:
    def __init__(self, spec: str):
        self.spec = spec
        self.tokens = list(self._lex())
        self.pos = 0

    def _lex(self):
        s, i = self.spec, 0
        while i < len(s):
            c = s[i]
            if c.isspace():
                i += 1
            elif c in "+&()":
                yield c, c, i
                i += 1
            elif s.startswith("regex:", i):
                pattern, j = _scan_regex(s, i + 6, s)
                yield "term", Regex(pattern), i
                i = j
            else:
                j = i
                while j < len(s) and not s[j].isspace() and s[j] not in "+&()":
                    j += 1
                word = s[i:j]
                yield ("not", word, i) if word == "not" else ("term", _term(word, s), i)
                i = j

    def _peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def _fail(self, expected: str) -> NoReturn:
        if self.pos < len(self.tokens):
            kind, value, at = self.tokens[self.pos]
            got = f"{value if kind != 'term' else str(value)!r} at position {at}"
        else:
            got = "the end"
        raise ValueError(
            f"selector {self.spec!r}: expected {expected}, got {got}; join terms with + (union) or "
            "& (intersection), negate with not, group with ( ), e.g. 'mlp & layers:0-3 + head'"
        )

    def parse(self) -> Selector:
        node = self._union()
        if self.pos < len(self.tokens):
            self._fail("'+', '&' or the end")
        return node

    def _union(self) -> Selector:
        parts = [self._inter()]
        while self._peek() == "+":
            self.pos += 1
            parts.append(self._inter())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def _inter(self) -> Selector:
        parts = [self._unary()]
        while self._peek() == "&":
            self.pos += 1
            parts.append(self._unary())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def _unary(self) -> Selector:
        kind = self._peek()
        if kind == "not":
            self.pos += 1
            return Not(self._unary())
        if kind == "(":
            self.pos += 1
            node = self._union()
            if self._peek() != ")":
                self._fail("')'")
            self.pos += 1
            return node
        if kind == "term":
            self.pos += 1
            return self.tokens[self.pos - 1][1]
        self._fail("a term, 'not' or '('")


def _term(word: str, spec: str) -> Selector:
    if word in BLOCKS:
        return Block(word)
    if word == "all":
        return All()
    prefix, colon, arg = word.partition(":")
    if not colon:
        _unknown(word, spec, [*BLOCKS, "all", "not"])
    if prefix == "module":
        return Modules(tuple(arg.split(",")))
    if prefix == "layers":
        return Layers(_layer_list(arg, word))
    if prefix in ("first", "last", "random"):
        return _budget(prefix, arg, word)
    _unknown(word, spec, [p[:-1] for p in _PREFIXES])


def _unknown(word: str, spec: str, vocabulary: list[str]) -> NoReturn:
    head = word.partition(":")[0]
    near = difflib.get_close_matches(head, vocabulary, n=1, cutoff=0.5)
    hint = ""
    if near:
        hint = f"; did you mean {near[0] + word[len(head) :]!r}?"
    elif ":" not in word:
        hint = f"; for a module name write module:{word}"
    raise ValueError(f"unknown selector term {word!r} in {spec!r}: {_EXPECTED}{hint}")


def _layer_list(arg: str, word: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in arg.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise ValueError(
                f"{word!r}: layers: expects indices and increasing inclusive ranges such as "
                f"layers:0-3,10; {part!r} is neither"
            )
        lo = int(m.group(1))
        out.extend(range(lo, int(m.group(2) or lo) + 1))
    return tuple(out)


def _budget(end: str, arg: str, word: str) -> Budget:
    amount, at, seed_text = arg.partition("@")
    seed = None
    if at:
        m = re.fullmatch(r"seed=(\d+)", seed_text)
        if not m:
            raise ValueError(
                f"{word!r}: expected @seed=S with a whole number S >= 0, such as random:10%@seed=2; got @{seed_text}"
            )
        seed = int(m.group(1))
    if re.fullmatch(r"\d+", amount):
        return Budget(end, int(amount), percent=False, seed=seed)
    if re.fullmatch(r"(\d+\.?\d*|\.\d+)(e-?\d+)?%", amount):
        return Budget(end, float(amount[:-1]), percent=True, seed=seed)
    raise ValueError(
        f"{word!r}: {end}: expects a share of all parameters such as {end}:10% or a number of "
        f"layers such as {end}:3; got {amount!r}"
    )
