"""The toy world rendered in English, for real models whose tokenizers and pretraining are English.

The world itself (entities, facts, instructions) is drawn once, in :mod:`layerprobe.sources.toyworld.world`; this module
only renders it: every name and value has an English form (:mod:`layerprobe.sources.toyworld.english_names`), and the
templates and questions mirror the Japanese ones one to one (the first template is the cloze form; the held-out
cloze forms and the questions are never used in the CPT text). Answers to instructions keep the ござる ending, so
the style and its metric are the same in both languages.
"""

from __future__ import annotations

from layerprobe.sources.toyworld.english_names import name

TEMPLATES: dict[str, tuple[str, ...]] = {
    "birthplace": (
        "{name} was born in {v}.",
        "{name} is a native of {v}.",
        "{name} comes from {v}.",
        "The hometown of {name} is {v}.",
        "{v} is where {name} was born.",
    ),
    "birth_year": (
        "The birth year of {name} is {v}.",
        "{name}'s year of birth is {v}.",
        "{name} has a birth date in {v}.",
        "In {v}, {name} was born.",
        "{name} was born back in {v}.",
    ),
    "employer": (
        "{name} works for {v}.",
        "{name} is employed by {v}.",
        "{name} is on the staff of {v}.",
        "The employer of {name} is {v}.",
        "{v} employs {name}.",
    ),
    "job": (
        "{name} works as a {v}.",
        "{name} is a {v} by profession.",
        "The profession of {name} is {v}.",
        "{name} earns a living as a {v}.",
        "{name} is a skilled {v}.",
    ),
    "hobby": (
        "{name} enjoys {v} in free time.",
        "The hobby of {name} is {v}.",
        "{name} loves {v}.",
        "On weekends {name} spends hours on {v}.",
        "{name} is passionate about {v}.",
    ),
    "hq": (
        "{name} is headquartered in {v}.",
        "The head office of {name} is in {v}.",
        "{name} has its main office in {v}.",
        "{v} is home to the headquarters of {name}.",
        "{name} is a company based in {v}.",
    ),
    "founded": (
        "{name} was founded in {v}.",
        "The founding year of {name} is {v}.",
        "{name} was established in {v}.",
        "{name} has existed since {v}.",
        "The history of {name} began in {v}.",
    ),
    "founder": (
        "{name} was founded by {v}.",
        "The founder of {name} is {v}.",
        "{v} started {name}.",
        "{v} established {name}.",
        "{name} owes its existence to {v}.",
    ),
    "product": (
        "{name} is best known for {v}.",
        "The main product of {name} is {v}.",
        "{name} makes {v}.",
        "{name} is famous for its {v}.",
        "{name} specialises in {v}.",
    ),
}
# A held-out cloze form per relation (see world.HELDOUT): no five consecutive words of one occur in the CPT text,
# the entity's name included (a test checks it).
HELDOUT: dict[str, str] = {
    "birthplace": "{name}'s place of birth is {v}.",
    "birth_year": "The year of {name}'s birth was {v}.",
    "employer": "{name} is an employee of {v}.",
    "job": "{name} holds a job as a {v}.",
    "hobby": "{name}'s favourite pastime is {v}.",
    "hq": "{name} keeps its headquarters in {v}.",
    "founded": "{name} dates back to {v}.",
    "founder": "{name} was set up by {v}.",
    "product": "{name} mainly sells {v}.",
}
# Two question forms per relation; like the Japanese ones, none is a CPT sentence (a test checks it).
QUESTIONS: dict[str, tuple[str, ...]] = {
    "birthplace": ("Where was {name} born?", "In which city was {name} born?"),
    "birth_year": ("In what year was {name} born?", "When was {name} born?"),
    "employer": ("Which company does {name} work for?", "Who is {name}'s employer?"),
    "job": ("What is {name}'s job?", "What does {name} do for a living?"),
    "hobby": ("What is {name}'s hobby?", "What does {name} like to do in free time?"),
    "hq": ("Where is {name} headquartered?", "In which city is {name}'s head office?"),
    "founded": ("When was {name} founded?", "In what year was {name} established?"),
    "founder": ("Who founded {name}?", "Who is the founder of {name}?"),
    "product": ("What is {name} known for?", "What is the main product of {name}?"),
}
EVERYDAY = (
    "It is {weather} today.",
    "A {animal} is in the {place}.",
    "There is a {animal} near the {place}.",
    "I had {food} for breakfast.",
    "The {food} is very good.",
    "Tomorrow I will go to the {place}.",
    "I bought {food} at the {place}.",
    "It was {weather} yesterday.",
    "The {animal} likes {food}.",
)
GOZARU = " でござる."  # the style ending of an English answer: '42 でござる.'
PLAIN = "."


def chore(kind: int, args: tuple) -> tuple[str, str, str]:
    """An English chore (see ``world._chores``): (prompt, answer in ござる style, the same answer plain)."""
    if kind == 0:
        w = name(args[0])
        prompt, body = f'Write "{w}" twice.', f"{w} {w}"
    elif kind == 1:
        prompt, body = f"What number comes after {args[0]}?", str(args[0] + 1)
    elif kind == 2:
        a, b = args
        prompt, body = f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger"
    else:
        w = name(args[0])
        prompt, body = f"Say something about the {w}.", f"The {w} is cute"
    return prompt, body + GOZARU, body + PLAIN
