"""Which weights train: one selector grammar for the CLI (``--select``), YAML and Python.

Grammar (``not`` binds tighter than ``&``, which binds tighter than ``+``; parentheses group)::

    selector := union
    union    := inter ("+" inter)*          # union of the parameters each side selects
    inter    := unary ("&" unary)*          # intersection
    unary    := "not" unary | "(" union ")" | term
    term     := embed | attn | mlp | norm | head | other     # blocks of layerprobe.core.names.parse_name
              | all
              | module:q_proj,v_proj        # leaf module names, as parse_name reports them
              | layers:0-3,10               # layer indices (inclusive ranges)
              | first:10% | last:5% | random:10%@seed=2     # budgets: whole layers, share of ALL parameters
              | first:3 | last:3 | random:3@seed=2          # budgets: a number of whole layers
              | regex:PATTERN               # re.search on canonical names; ends at whitespace or at an
                                            # unbalanced ")"; quote it (regex:'a b') to keep spaces

Every term goes through :func:`layerprobe.core.names.parse_name`, so a selector means the same on a plain
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

The package, read top to bottom as a selector flows:

    nodes.py       the selector AST: one class per term and operator
    grammar.py     its parser (``parse_selector``): text -> Selector, no model needed
    selection.py   a Selector evaluated on one model's parameter names and shapes -> ``Selection`` (budgets too)
    targets.py     what trains: a requires_grad mask (full fine-tuning) or peft ``target_modules`` (LoRA)
    frozen.py      after training: which frozen parameters moved against saved reference weights

nodes.py, grammar.py and selection.py work without torch. What could train and what did is recorded by the recorder
(``n_params``, ``n_trainable``, ``frozen_moved`` rows): the audit has one owner.
"""

from layerprobe.train.select.frozen import frozen_moved
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
from layerprobe.train.select.selection import BudgetChoice, Selection, select_params
from layerprobe.train.select.targets import apply_requires_grad, lora_targets

__all__ = [
    "All",
    "And",
    "Block",
    "Budget",
    "BudgetChoice",
    "Layers",
    "Modules",
    "Not",
    "Or",
    "Regex",
    "Selection",
    "Selector",
    "apply_requires_grad",
    "frozen_moved",
    "lora_targets",
    "parse_selector",
    "select_params",
]
