"""A selector evaluated on one model: which parameter names it picks, budgets resolved, tied tensors counted once.

Works on a model, its ``named_parameters()``, a state dict or ``(name, shape)`` pairs; no torch needed for shapes.
"""

from __future__ import annotations

import difflib
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from layerprobe.core.names import BLOCKS, parse_name
from layerprobe.train.select.grammar import (
    All,
    And,
    Block,
    Budget,
    Layers,
    Modules,
    Not,
    Or,
    Regex,
    Selector,
    parse_selector,
)
from layerprobe.train.select.nodes import _ranges


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
        where = (
            f"{_layers(self.layers)} ({len(self.layers)} of {self.n_layers})"
            if self.layers
            else f"no decoder layer (of {self.n_layers})"
        )
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
                    raise ValueError(
                        f"{node}: no parameter sits in a module named {m!r}; modules here: "
                        f"{', '.join(sorted(present))}" + (f"; did you mean {near[0]!r}?" if near else "")
                    )
            out = self.where(lambda p: p.module in node.names)
        elif isinstance(node, Layers):
            missing = [i for i in node.indices if i not in self.layer_numel]
            if missing:
                raise ValueError(
                    f"{node}: no layer {_ranges(missing)} in this model; it has layers {_ranges(self.layers) or 'none'}"
                )
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
            raise ValueError(
                f"selector term {str(node)!r} matches no parameter; this model has blocks "
                f"{', '.join(blocks)} and layers {_ranges(self.layers) or 'none'}; {self.shares_text()}"
            )
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
            k = int(node.amount)
            if k > len(order):
                raise ValueError(
                    f"{term} asks for {k} layers but this model has {len(order)}; "
                    f"ask for at most {node.end}:{len(order)}"
                )
        else:
            target = node.amount / 100
            if target < cum[0] - 1e-12:
                raise ValueError(
                    f"{term} is below one layer's share: layer {order[0]}, the first it would take, "
                    f"holds {_pct(cum[0])} of all parameters; ask for at least {_pct(cum[0])} or name "
                    f"layers with layers:...; {self.shares_text()}"
                )
            if target > cum[-1] + 1e-12:
                raise ValueError(
                    f"{term} asks for more than all {len(order)} layers hold ({_pct(cum[-1])} of all "
                    f"parameters); ask for at most {_pct(cum[-1])} or add blocks such as + embed + head; "
                    f"{self.shares_text()}"
                )
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
        key = ("name", name)  # type: ignore[assignment]
    p = parse_name(name)
    return _Param(name, p.canonical, p.layer, p.block, p.module, numel, key)


def select_params(model_or_named_shapes, spec: str | Selector) -> Selection:
    """Evaluate a selector on a model, its ``named_parameters()``, a state dict or ``(name, shape)`` pairs."""
    node = parse_selector(spec)
    table = _Table(model_or_named_shapes)
    matched = table.eval(node)
    if not matched:
        raise ValueError(
            f"selector {str(node)!r} matches no parameter (each term matches some, their combination "
            f"none); {table.shares_text()}"
        )
    keys = {p.key for p in table.params if p.name in matched}
    first_name: dict = {}
    for p in table.params:
        if p.name in matched:
            first_name.setdefault(p.key, p.name)
    tied = tuple((p.name, first_name[p.key]) for p in table.params if p.key in keys and p.name not in matched)
    names = matched | {n for n, _ in tied}
    unique = {p.key: p for p in table.params if p.name in names}
    layers = tuple(sorted({p.layer for p in table.params if p.name in names and p.layer >= 0}))
    return Selection(
        spec=str(node),
        names=frozenset(names),
        tied=tied,
        trainable=sum(p.numel for p in unique.values()),
        total=table.total,
        layers=layers,
        n_layers=len(table.layers),
        budgets=tuple(table.budgets.values()),
    )


def _layers(indices: tuple[int, ...]) -> str:
    return ("layer " if len(indices) == 1 else "layers ") + _ranges(indices)


def _pct(share: float) -> str:
    return f"{100 * share:.1f} %"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)
