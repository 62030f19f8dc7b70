"""Schedules against a plain reference: the exact steps each spec fires at, defaults included, and the exact message
of each bad spec (mutation testing found these unchecked: a default interval of 2, an offset added instead of
subtracted, a default count of 51, the bounds of ``logspaced``, a digit-only spec)."""

from __future__ import annotations

import pytest

from layerprobe.record.schedules import every, logspaced, parse_schedule


def fired(schedule, last: int) -> list[int]:
    return [s for s in range(last + 1) if schedule(s)]


def log_reference(max_step: int, count: int) -> list[int]:
    """Steps round(max_step ** (k / (count - 1))) for k = 0 .. count-1, each once (1 alone for count 1)."""
    if count == 1:
        return [1]
    return sorted({round(max_step ** (k / (count - 1))) for k in range(count)})


def test_every_defaults_to_each_step_and_shifts_by_the_offset():
    assert fired(every(), 6) == [1, 2, 3, 4, 5, 6]
    assert fired(every(3, offset=1), 12) == [4, 7, 10]  # offset steps first, then every 3rd
    assert fired(every(4, offset=2), 14) == [6, 10, 14]


@pytest.mark.parametrize("max_step, count", [(1_000_000, 50), (1000, 7), (1, 1), (5, 1), (1, 3)])
def test_logspaced_is_the_reference(max_step, count):
    assert fired(logspaced(max_step, count), max_step) == log_reference(max_step, count)


def test_logspaced_and_log_specs_default_to_50_points():
    ref = log_reference(1_000_000, 50)
    assert ref != log_reference(1_000_000, 51)  # the count is what tells them apart
    assert fired(logspaced(1_000_000), 1_000_000) == ref
    assert fired(parse_schedule("log", 1_000_000), 1_000_000) == ref
    assert fired(parse_schedule("log:50", 1_000_000), 1_000_000) == ref


@pytest.mark.parametrize(
    "max_step, count", [(0, 5), (5, 0), (-1, 5), (0, 0)], ids=["no steps", "no points", "negative", "both"]
)
def test_logspaced_refuses_an_empty_range_and_says_what_it_got(max_step, count):
    with pytest.raises(ValueError) as e:
        logspaced(max_step, count)
    assert str(e.value) == (f"logspaced needs max_step >= 1 and count >= 1, got max_step={max_step}, count={count}")


def test_parse_schedule_accepts_callables_digits_and_never():
    def custom(step):
        return step in (2, 7)

    assert parse_schedule(custom) is custom
    assert fired(parse_schedule("10"), 35) == [10, 20, 30]
    assert fired(parse_schedule(" 4 "), 9) == [4, 8]
    assert fired(parse_schedule(3), 9) == [3, 6, 9]
    assert fired(parse_schedule("never"), 50) == []


@pytest.mark.parametrize(
    "spec, max_steps, message",
    [
        ("log:4", None, "bad schedule 'log:4': log schedules need the number of training steps"),
        ("every:3:1", None, "bad schedule 'every:3:1': invalid literal for int() with base 10: '3:1'"),
        (
            "every:0",
            None,
            "bad schedule 'every:0': a schedule needs an interval of at least 1 step, got every=0; "
            "use every=1 for each step",
        ),
        ("log:0", 10, "bad schedule 'log:0': logspaced needs max_step >= 1 and count >= 1, got max_step=10, count=0"),
        (
            "sometimes",
            None,
            "unknown schedule 'sometimes': expected an interval like 10, 'every:10', 'log:50' or 'never'",
        ),
    ],
)
def test_bad_specs_say_what_was_given_and_what_is_expected(spec, max_steps, message):
    with pytest.raises(ValueError) as e:
        parse_schedule(spec, max_steps)
    assert str(e.value) == message
