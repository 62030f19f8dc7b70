"""Which weights train: one selector grammar for the CLI (``--select``), YAML and Python.

Grammar (``not`` binds tighter than ``&``, which binds tighter than ``+``; parentheses group)::

    selector := union
    union    := inter ("+" inter)*          # union of the parameters each side selects
    inter    := unary ("&" unary)*          # intersection
    unary    := "not" unary | "(" union ")" | term
    term     := embed | attn | mlp | norm | head | other     # blocks of layerprobe.names.parse_name
              | all
              | module:q_proj,v_proj        # leaf module names, as parse_name reports them
              | layers:0-3,10               # layer indices (inclusive ranges)
              | first:10% | last:5% | random:10%@seed=2     # budgets: whole layers, share of ALL parameters
              | first:3 | last:3 | random:3@seed=2          # budgets: a number of whole layers
              | regex:PATTERN               # re.search on canonical names; ends at whitespace or at an
                                            # unbalanced ")"; quote it (regex:'a b') to keep spaces

Every term goes through :func:`layerprobe.names.parse_name`, so a selector means the same on a plain
model, a peft-wrapped one and a list of ``(name, shape)`` pairs. Module names need the ``module:``
prefix: a bare word must be a block name or ``all``, so a typo (``mpl``) is an error, not an empty match.
Each term must match at least one parameter, and so must the whole selector.

Budget semantics. A *layer* is every parameter with that layer index. Its share is its parameter count
over the count of ALL parameters of the model (numel; a tensor tied under several names counts once).
``first`` orders layers from 0 up, ``last`` from the top down, ``random`` shuffles them with
``random.Random(seed)``. A budget of N % takes the first k layers of that order, where k is the count
whose cumulative share is nearest N % (ties go to fewer layers), so the share achieved lies within half
a layer of the target. N % below the share of the first layer in the order, or above the share of all
layers together, is an error that lists the layers and their shares. A budget is computed over whole
layers and all parameters whatever the rest of the expression says: ``mlp & first:10%`` is the MLP part
of the layers ``first:10%`` picks.

Tied weights. A tensor trains when any of its names is selected, so training ``embed`` of a model with
tied embeddings also trains ``lm_head``; :class:`Selection` lists such names in ``tied``.

Everything here except :func:`apply_requires_grad`, :func:`lora_targets`, :func:`audit_trainable` and
:func:`frozen_unchanged` works without torch.
"""

from __future__ import annotations

import difflib
import logging
import math
import random
import re
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Iterable, Mapping

from layerprobe.names import BLOCKS, parse_name

log = logging.getLogger(__name__)

_PREFIXES = ("module:", "layers:", "first:", "last:", "random:", "regex:")
_EXPECTED = ("expected one of embed, attn, mlp, norm, head, other, all, module:NAME,..., layers:0-3,10, "
             "first:N%, last:N%, random:N%@seed=S, regex:PATTERN, joined with + (union), & (intersection), "
             "not, ( )")


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
            raise ValueError(f"module: expects comma-separated leaf module names such as module:q_proj,v_proj; "
                             f"got {','.join(self.names)!r}")
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
                raise ValueError(f"{self.end}: expects a share of all parameters in (0, 100] %, such as "
                                 f"{self.end}:10%; got {self.amount!r}")
            object.__setattr__(self, "amount", float(self.amount))
        elif not (isinstance(self.amount, int) and self.amount >= 1):
            raise ValueError(f"{self.end}: expects a percentage (10%) or a whole number of layers >= 1; "
                             f"got {self.amount!r}")
        if self.end == "random" and not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"random: needs a seed >= 0 so the choice can be repeated, such as "
                             f"random:10%@seed=0; got seed={self.seed!r}")
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
            raise ValueError(f"regex: expects a pattern, such as regex:'layers\\.[0-3]\\..*q_proj'; "
                             f"got {self.pattern!r}")
        try:
            object.__setattr__(self, "compiled", re.compile(self.pattern))
        except re.error as e:
            raise ValueError(f"regex: expects a Python regular expression; {self.pattern!r} is not one ({e})") from None
        if self._quote() is None:
            raise ValueError(f"regex pattern {self.pattern!r} holds both quote characters and needs quoting; "
                             "write one of them as \\x27 or \\x22")

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
            raise ValueError(f"regex: quote {text[start]} opened at position {start} of {spec!r} is never closed; "
                             "close it or write the pattern without quotes")
        return text[start + 1:end], end + 1
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

    def _fail(self, expected: str):
        if self.pos < len(self.tokens):
            kind, value, at = self.tokens[self.pos]
            got = f"{value if kind != 'term' else str(value)!r} at position {at}"
        else:
            got = "the end"
        raise ValueError(f"selector {self.spec!r}: expected {expected}, got {got}; join terms with + (union) or "
                         "& (intersection), negate with not, group with ( ), e.g. 'mlp & layers:0-3 + head'")

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


def _unknown(word: str, spec: str, vocabulary: list[str]):
    head = word.partition(":")[0]
    near = difflib.get_close_matches(head, vocabulary, n=1, cutoff=0.5)
    hint = ""
    if near:
        hint = f"; did you mean {near[0] + word[len(head):]!r}?"
    elif ":" not in word:
        hint = f"; for a module name write module:{word}"
    raise ValueError(f"unknown selector term {word!r} in {spec!r}: {_EXPECTED}{hint}")


def _layer_list(arg: str, word: str) -> tuple[int, ...]:
    out = []
    for part in arg.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"{word!r}: layers: expects indices and increasing inclusive ranges such as "
                             f"layers:0-3,10; {part!r} is neither")
        lo = int(m.group(1))
        out.extend(range(lo, int(m.group(2) or lo) + 1))
    return tuple(out)


def _budget(end: str, arg: str, word: str) -> Budget:
    amount, at, seed_text = arg.partition("@")
    seed = None
    if at:
        m = re.fullmatch(r"seed=(\d+)", seed_text)
        if not m:
            raise ValueError(f"{word!r}: expected @seed=S with a whole number S >= 0, such as random:10%@seed=2; "
                             f"got @{seed_text}")
        seed = int(m.group(1))
    if re.fullmatch(r"\d+", amount):
        return Budget(end, int(amount), percent=False, seed=seed)
    if re.fullmatch(r"(\d+\.?\d*|\.\d+)(e-?\d+)?%", amount):
        return Budget(end, float(amount[:-1]), percent=True, seed=seed)
    raise ValueError(f"{word!r}: {end}: expects a share of all parameters such as {end}:10% or a number of "
                     f"layers such as {end}:3; got {amount!r}")


# ---------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class BudgetChoice:
    """What one budget term picked: its layers, their share of all parameters, the target share (or None)."""

    term: str
    layers: tuple[int, ...]
    share: float
    target: float | None


@dataclass(frozen=True)
class Selection:
    """The parameters a selector picks in one model.

    names: parameter names that train (names of tensors tied to a selected one included);
    tied: ``(name, selected name)`` pairs for names not selected themselves that share a selected tensor;
    trainable / total: parameter counts (numel, tied tensors once); layers: layer indices with at least one
    selected parameter, of ``n_layers`` in the model; budgets: what each budget term picked.
    """

    spec: str
    names: frozenset[str]
    tied: tuple[tuple[str, str], ...]
    trainable: int
    total: int
    layers: tuple[int, ...]
    n_layers: int
    budgets: tuple[BudgetChoice, ...]

    @property
    def share(self) -> float:
        return self.trainable / self.total

    def describe(self) -> str:
        where = (f"{_layers(self.layers)} ({len(self.layers)} of {self.n_layers})" if self.layers
                 else f"no decoder layer (of {self.n_layers})")
        text = f"{self.spec} -> {where}, {_pct(self.share)} of {_count(self.total)} parameters trainable"
        for b in self.budgets:
            target = f", target {_pct(b.target)}" if b.target is not None else ""
            text += f"; {b.term} took {_layers(b.layers)} = {_pct(b.share)}{target}"
        for name, via in self.tied:
            text += f"; {name} trains with {via} (tied)"
        return text


@dataclass(frozen=True)
class _Param:
    name: str
    canonical: str
    layer: int
    block: str
    module: str
    numel: int
    key: Any  # equal for names of one tied tensor


class _Table:
    """The parameters of a model (or of (name, shape) pairs) with what the grammar needs to know."""

    def __init__(self, source):
        self.params = [_param(n, v) for n, v in _named_items(source)]
        if not self.params:
            raise ValueError("expected a model or (name, shape) pairs with at least one parameter; got none")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"parameter names must be unique; {dup[:5]} appear more than once")
        unique = {p.key: p for p in reversed(self.params)}  # first name of each tensor wins
        self.total = sum(p.numel for p in unique.values())
        self.layer_numel: dict[int, int] = {}
        for p in unique.values():
            if p.layer >= 0:
                self.layer_numel[p.layer] = self.layer_numel.get(p.layer, 0) + p.numel
        self.layers = sorted(self.layer_numel)
        self.all = frozenset(names)
        self.budgets: dict[str, BudgetChoice] = {}

    def shares_text(self) -> str:
        shares = ", ".join(f"{i} {_pct(self.layer_numel[i] / self.total)}" for i in self.layers)
        outside = 1 - sum(self.layer_numel.values()) / self.total
        return f"layer shares of all {_count(self.total)} parameters: {shares}; outside layers {_pct(outside)}"

    def where(self, pred) -> frozenset[str]:
        return frozenset(p.name for p in self.params if pred(p))

    def eval(self, node: Selector) -> frozenset[str]:
        if isinstance(node, Or):
            return frozenset().union(*(self.eval(o) for o in node.operands))
        if isinstance(node, And):
            return frozenset.intersection(*(self.eval(o) for o in node.operands))
        if isinstance(node, Not):
            return self.all - self.eval(node.operand)
        if isinstance(node, All):
            return self.all
        if isinstance(node, Modules):
            present = {p.module for p in self.params}
            for m in node.names:
                if m not in present:
                    near = difflib.get_close_matches(m, present, n=1)
                    raise ValueError(f"{node}: no parameter sits in a module named {m!r}; modules here: "
                                     f"{', '.join(sorted(present))}" + (f"; did you mean {near[0]!r}?" if near else ""))
            out = self.where(lambda p: p.module in node.names)
        elif isinstance(node, Layers):
            missing = [i for i in node.indices if i not in self.layer_numel]
            if missing:
                raise ValueError(f"{node}: no layer {_ranges(missing)} in this model; it has layers "
                                 f"{_ranges(self.layers) or 'none'}")
            out = self.where(lambda p: p.layer in node.indices)
        elif isinstance(node, Budget):
            chosen = self._budget(node)
            out = self.where(lambda p: p.layer in chosen)
        elif isinstance(node, Block):
            out = self.where(lambda p: p.block == node.name)
        elif isinstance(node, Regex):
            out = self.where(lambda p: node.compiled.search(p.canonical) is not None)
        else:
            raise TypeError(f"expected a Selector node, got {type(node).__name__}")
        if not out:
            blocks = sorted({p.block for p in self.params}, key=BLOCKS.index)
            raise ValueError(f"selector term {str(node)!r} matches no parameter; this model has blocks "
                             f"{', '.join(blocks)} and layers {_ranges(self.layers) or 'none'}; {self.shares_text()}")
        return out

    def _budget(self, node: Budget) -> tuple[int, ...]:
        term = str(node)
        if term in self.budgets:
            return self.budgets[term].layers
        if not self.layers:
            raise ValueError(f"{term}: this model has no decoder layers to choose from; use block names or regex:")
        order = list(self.layers)
        if node.end == "last":
            order.reverse()
        elif node.end == "random":
            random.Random(node.seed).shuffle(order)
        cum = list(accumulate(self.layer_numel[i] / self.total for i in order))
        target = None
        if not node.percent:
            k = node.amount
            if k > len(order):
                raise ValueError(f"{term} asks for {k} layers but this model has {len(order)}; "
                                 f"ask for at most {node.end}:{len(order)}")
        else:
            target = node.amount / 100
            if target < cum[0] - 1e-12:
                raise ValueError(f"{term} is below one layer's share: layer {order[0]}, the first it would take, "
                                 f"holds {_pct(cum[0])} of all parameters; ask for at least {_pct(cum[0])} or name "
                                 f"layers with layers:...; {self.shares_text()}")
            if target > cum[-1] + 1e-12:
                raise ValueError(f"{term} asks for more than all {len(order)} layers hold ({_pct(cum[-1])} of all "
                                 f"parameters); ask for at most {_pct(cum[-1])} or add blocks such as + embed + head; "
                                 f"{self.shares_text()}")
            k = min(range(1, len(order) + 1), key=lambda n: (abs(cum[n - 1] - target), n))
        choice = BudgetChoice(term, tuple(sorted(order[:k])), cum[k - 1], target)
        self.budgets[term] = choice
        return choice.layers


def _named_items(source) -> Iterable[tuple[str, Any]]:
    if hasattr(source, "named_parameters") and callable(source.named_parameters):
        return source.named_parameters(remove_duplicate=False)
    if isinstance(source, Mapping):
        return source.items()
    if isinstance(source, (str, bytes)):
        raise ValueError(f"expected a model, a mapping or (name, shape) pairs; got the string {source!r}")
    return source


def _param(name: str, value) -> _Param:
    if hasattr(value, "data_ptr"):  # a torch tensor: names of one tied tensor share its storage
        numel = int(value.numel())
        ptr = value.data_ptr()
        key = ("ptr", ptr, tuple(value.shape)) if ptr else ("id", id(value))
    else:
        shape = getattr(value, "shape", value)
        shape = (shape,) if isinstance(shape, int) else shape
        try:
            numel = math.prod(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ValueError(f"expected a tensor or a shape for parameter {name!r}; got {value!r}") from None
        key = ("name", name)
    p = parse_name(name)
    return _Param(name, p.canonical, p.layer, p.block, p.module, numel, key)


def select_params(model_or_named_shapes, spec: str | Selector) -> Selection:
    """Evaluate a selector on a model, its ``named_parameters()``, a state dict or ``(name, shape)`` pairs."""
    node = parse_selector(spec)
    table = _Table(model_or_named_shapes)
    matched = table.eval(node)
    if not matched:
        raise ValueError(f"selector {str(node)!r} matches no parameter (each term matches some, their combination "
                         f"none); {table.shares_text()}")
    keys = {p.key for p in table.params if p.name in matched}
    first_name = {}
    for p in table.params:
        if p.name in matched:
            first_name.setdefault(p.key, p.name)
    tied = tuple((p.name, first_name[p.key]) for p in table.params if p.key in keys and p.name not in matched)
    names = matched | {n for n, _ in tied}
    unique = {p.key: p for p in table.params if p.name in names}
    layers = tuple(sorted({p.layer for p in table.params if p.name in names and p.layer >= 0}))
    return Selection(spec=str(node), names=frozenset(names), tied=tied,
                     trainable=sum(p.numel for p in unique.values()), total=table.total, layers=layers,
                     n_layers=len(table.layers), budgets=tuple(table.budgets.values()))


# ---------------------------------------------------------------------------------------------- training


def apply_requires_grad(model, spec: str | Selector) -> Selection:
    """Full fine-tuning: ``requires_grad`` True exactly on the selection, False elsewhere. Call it before the
    optimizer is built; an optimizer skips parameters without gradients, weight decay included."""
    sel = select_params(model, spec)
    for name, p in model.named_parameters(remove_duplicate=False):
        p.requires_grad_(name in sel.names)
    log.info(sel.describe())
    return sel


def lora_targets(model, spec: str | Selector) -> dict:
    """peft ``LoraConfig`` arguments ``target_modules`` and ``layers_to_transform`` that put adapters on exactly
    the modules whose parameters the selector picks.

    A (module names) x (layers) selection compiles to a list plus ``layers_to_transform``; any other one
    (``mlp + layers:0-1``) to a regex string, which peft matches with ``re.fullmatch`` against module names.
    Each result is checked with peft's own matcher. Selected parameters of modules LoRA cannot adapt (norms)
    stay out, with a warning; a selection of nothing but such parameters is an error.
    """
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    if hasattr(model, "peft_config"):
        raise ValueError("lora_targets needs the base model, before get_peft_model wraps it; got a peft model")
    sel = select_params(model, spec)
    tied = {n for n, _ in sel.tied}
    adaptable = {name for name, m in model.named_modules()
                 if name and isinstance(m, (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D))}
    targets, skipped = set(), []
    for name in sel.names - tied:
        module = name.rpartition(".")[0]
        (targets.add(module) if module in adaptable else skipped.append(name))
    if not targets:
        raise ValueError(f"selector {sel.spec!r} picks only parameters LoRA cannot adapt "
                         f"({', '.join(sorted(skipped)[:4])}{', ...' if len(skipped) > 4 else ''}); "
                         "LoRA adapts Linear, Embedding and Conv modules: "
                         "select attn, mlp, embed or head")
    if skipped:
        blocks = sorted({parse_name(n).block for n in skipped})
        log.warning("%s: %d selected parameters (%s) sit in modules LoRA cannot adapt and stay frozen",
                    sel.spec, len(skipped), ", ".join(blocks))
    names = [name for name, _ in model.named_modules() if name]
    leaves = sorted({t.rpartition(".")[2] for t in targets})
    layers = sorted({parse_name(t).layer for t in targets})
    candidates = [dict(target_modules=leaves, layers_to_transform=None)]
    if layers[0] >= 0:
        candidates.append(dict(target_modules=leaves, layers_to_transform=layers))
    candidates.append(dict(target_modules=_module_regex(targets), layers_to_transform=None))
    for kwargs in candidates:
        if _peft_matches(kwargs, names) == targets:
            return kwargs
    raise RuntimeError(f"could not compile {sel.spec!r} to peft targets: the regex "
                       f"{candidates[-1]['target_modules']!r} misses some selected modules (a layerprobe bug)")


def _module_regex(modules: Iterable[str]) -> str:
    """One regex for a set of module names: ``model\\.layers\\.(?:0|1)\\.mlp\\.(?:down_proj|up_proj)|lm_head``."""
    layers_of: dict[tuple[str, str], set[int]] = {}
    for m in sorted(modules):
        layer, parts = parse_name(m).layer, m.split(".")
        i = next((i for i, s in enumerate(parts) if layer >= 0 and s == str(layer)), None)
        key = (m, "") if i is None else (".".join(parts[:i]), ".".join(parts[i + 1:]))
        layers_of.setdefault(key, set()).update([] if i is None else [layer])
    suffixes: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for (prefix, suffix), layers in layers_of.items():
        suffixes.setdefault((prefix, tuple(sorted(layers))), []).append(re.escape(suffix))
    alts = []
    for (prefix, layers), ends in suffixes.items():
        if not layers:
            alts.append(re.escape(prefix))
            continue
        end = ends[0] if len(ends) == 1 else f"(?:{'|'.join(ends)})"
        alts.append(rf"{re.escape(prefix)}\.(?:{'|'.join(map(str, layers))})\.{end}")
    return "|".join(alts)


def _peft_matches(kwargs: dict, module_names: list[str]) -> set[str]:
    from types import SimpleNamespace

    from peft.tuners.tuners_utils import check_target_module_exists

    cfg = SimpleNamespace(**kwargs, layers_pattern=None, exclude_modules=None, modules_to_save=None,
                          target_parameters=None)
    return {n for n in module_names if check_target_module_exists(cfg, n)}


# ---------------------------------------------------------------------------------------------- audit


def audit_trainable(model) -> dict:
    """Trainable and total parameter counts (tied tensors once), the trainable share, and both per block."""
    trainable = total = 0
    by_block = {b: {"trainable": 0, "total": 0} for b in BLOCKS}
    for name, p in model.named_parameters():
        n = p.numel()
        block = by_block[parse_name(name).block]
        total += n
        block["total"] += n
        if p.requires_grad:
            trainable += n
            block["trainable"] += n
    return {"trainable": trainable, "total": total, "share": trainable / total if total else 0.0,
            "by_block": {b: c for b, c in by_block.items() if c["total"]}}


def frozen_unchanged(model, reference) -> list[str]:
    """Names of frozen parameters (``requires_grad`` False) that differ from ``reference``, bit for bit.

    ``reference``: a state dict taken before training, or a path to a ``.safetensors`` file, a folder of
    them (``save_pretrained`` output), or a ``torch.save``-d state dict. Parameters are looked up by name,
    then by canonical name (so a peft-wrapped model compares with its base checkpoint), then under any
    other name of the same tied tensor; a frozen parameter found under none of them is an error.
    """
    import contextlib

    import torch

    with contextlib.ExitStack() as stack:
        keys, get = _reference(reference, stack)
        aliases: dict[int, list[str]] = {}
        params = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
            params[id(p)] = p
        moved, missing = [], []
        for pid, names in aliases.items():
            p = params[pid]
            if p.requires_grad or (parse_name(names[0]).lora is not None and names[0] not in keys):
                continue
            key = next((k for n in names for k in (n, parse_name(n).canonical) if k in keys), None)
            if key is None:
                missing.append(names[0])
                continue
            ref = get(key)
            with torch.no_grad():
                if tuple(ref.shape) != tuple(p.shape) or not torch.equal(p.detach().to("cpu", ref.dtype), ref.cpu()):
                    moved.extend(names)
        if missing:
            raise ValueError(f"the reference has no tensor for frozen parameters {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}; pass a state dict or checkpoint of this model "
                             "taken before training")
        return sorted(moved)


def _reference(reference, stack) -> tuple[set[str], Any]:
    if isinstance(reference, Mapping):
        return set(reference), reference.__getitem__
    import torch
    from safetensors import safe_open

    path = Path(reference)
    if not path.exists():
        raise FileNotFoundError(f"no reference weights at {path}: expected a .safetensors file, a folder of them "
                                "or a torch.save-d state dict")
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise FileNotFoundError(f"no .safetensors files in {path}; save the reference with save_pretrained")
    if files[0].suffix != ".safetensors":
        state = torch.load(files[0], map_location="cpu", weights_only=True)
        return set(state), state.__getitem__
    handles = {}
    for f in files:
        h = stack.enter_context(safe_open(str(f), framework="pt"))
        handles.update({k: h for k in h.keys()})
    return set(handles), lambda k: handles[k].get_tensor(k)


def _layers(indices: tuple[int, ...]) -> str:
    return ("layer " if len(indices) == 1 else "layers ") + _ranges(indices)


def _pct(share: float) -> str:
    return f"{100 * share:.1f} %"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)
