"""The selector grammar's parser: text -> the AST of :mod:`layerprobe.train.select.nodes` (``str()`` of the result
parses back to it).

See :mod:`layerprobe.train.select` for the grammar itself. Nothing here looks at a model.
"""

from __future__ import annotations

import difflib
import re
from typing import NoReturn

from layerprobe.core.names import BLOCKS
from layerprobe.train.select.nodes import All, And, Block, Budget, Layers, Modules, Not, Or, Regex, Selector, scan_regex

_PREFIXES = ("module:", "layers:", "first:", "last:", "random:", "regex:")
_EXPECTED = (
    "expected one of embed, attn, mlp, norm, head, other, all, module:NAME,..., layers:0-3,10, "
    "first:N%, last:N%, random:N%@seed=S, regex:PATTERN, joined with + (union), & (intersection), "
    "not, ( )"
)


def parse_selector(spec: str | Selector) -> Selector:
    """Parse a selector string (see the module docstring); ``str()`` of the result parses back to it."""
    if isinstance(spec, Selector):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"expected a selector string such as 'mlp+head' or 'first:10%'; got {spec!r}")
    return _Parser(spec).parse()


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
                pattern, j = scan_regex(s, i + 6, s)
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
