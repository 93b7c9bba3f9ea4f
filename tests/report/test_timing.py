"""The timing protocol: warm-up untimed, rounds interleaved, median and spread, paired speedups beside their
bounds, labelled in words when they are noise (synthetic rows: no timing is asserted)."""

from __future__ import annotations

import re

import pytest

from diffattn.report.timing import (
    ABOVE_BOUND,
    FASTER,
    MIN_ROUNDS,
    SLOWER,
    WITHIN_NOISE,
    Speedup,
    Spread,
    interleaved_rounds,
    labels,
    load_average,
    speedup_fields,
)


def test_rounds_are_interleaved_after_one_untimed_warmup_each():
    calls = []
    fns = {"dense": lambda: calls.append("dense"), "gna": lambda: calls.append("gna")}
    warm = {"gna": lambda: calls.append("gna-warm")}
    rounds = interleaved_rounds(fns, 4, warmup=warm)
    assert calls == ["dense", "gna-warm"] + ["dense", "gna"] * 4  # A B A B ..., warm-up first and untimed
    assert {k: len(v) for k, v in rounds.times.items()} == {"dense": 4, "gna": 4}


def test_a_fn_may_return_the_time_it_measured():
    values = iter([2.0, 1.0, 4.0, 1.0, 3.0, 2.0])
    fns = {"dense": lambda: next(values), "gna": lambda: next(values)}
    rounds = interleaved_rounds(fns, 3, warmup={"dense": lambda: None, "gna": lambda: None})
    assert rounds.times == {"dense": (2.0, 4.0, 3.0), "gna": (1.0, 1.0, 2.0)}
    s = rounds.speedup("dense", "gna")
    assert s.spread.values == (2.0, 4.0, 1.5) and s.value == 2.0 and (s.spread.low, s.spread.high) == (1.5, 4.0)


@pytest.mark.parametrize("bad", [0, 2, 2.5, True], ids=["zero", "two", "float", "bool"])
def test_fewer_than_three_rounds_refused(bad):
    with pytest.raises(ValueError, match=f"rounds={bad!r} must be an int >= {MIN_ROUNDS}"):
        interleaved_rounds({"a": lambda: None}, bad)


# synthetic rows: (per-round reference times, per-round method times, bound) -> the words expected
CASES = {
    "above-bound": ((1.0, 1.0, 1.0), (0.5, 0.52, 0.48), 1.5, [ABOVE_BOUND]),  # 2.0x against a 1.5x bound
    "within-noise": ((1.0, 1.0, 1.0), (0.9, 1.05, 0.95), 3.0, [WITHIN_NOISE]),  # ratios 0.95-1.11 straddle 1
    "above-and-noisy": ((1.0, 1.0, 1.0), (0.8, 1.1, 0.9), 1.05, [ABOVE_BOUND, WITHIN_NOISE]),
    "clearly-faster": ((1.0, 1.1, 1.0), (0.5, 0.5, 0.6), 4.0, [FASTER]),
    "clearly-slower": ((1.0, 1.0, 1.0), (1.3, 1.2, 1.4), 4.0, [SLOWER]),
    "faster-no-bound": ((1.0, 1.0, 1.0), (0.5, 0.5, 0.5), None, [FASTER]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_protocol_labels_synthetic_rows(case):
    ref, method, bound, expected = CASES[case]
    s = Speedup.paired(ref, method, amdahl_bound=bound, attention_bound=None if bound is None else 10.0)
    assert s.labels == expected
    text = s.text()
    assert text.endswith(": " + "; ".join(expected))
    for number in re.findall(r"\d+\.\d+", text):  # rounded for people: at most 2 decimals
        assert len(number.split(".")[1]) <= 2, text
    d = s.to_dict()
    assert d["labels"] == expected and d["per_round"] == [r / m for r, m in zip(ref, method)]  # raw in JSON


def test_labels_judge_the_bound_strictly_and_the_spread_inclusively():
    assert labels(1.5, Spread.of([1.4, 1.6]), 1.5) == [FASTER]  # equal to the bound is possible
    assert labels(1.51, Spread.of([1.2, 1.6]), 1.5) == [ABOVE_BOUND]
    assert labels(1.2, Spread.of([1.0, 1.3]), None) == [WITHIN_NOISE]  # a round at exactly 1.0
    assert labels(1.0, None, None) == [WITHIN_NOISE]


def test_speedup_is_judged_against_the_amdahl_bound_first():
    s = Speedup.paired([1.0] * 3, [0.5] * 3, amdahl_bound=1.8, attention_bound=16.0)
    assert s.bound == 1.8 and s.labels == [ABOVE_BOUND] and s.fraction_of_bound == pytest.approx(2.0 / 1.8)
    assert "Amdahl bound 1.80x (1.11 of it)" in s.text() and "attention-only bound 16.00x" in s.text()
    only = Speedup.paired([1.0] * 3, [0.5] * 3, attention_bound=16.0)
    assert only.labels == [FASTER] and "attention-only bound 16.00x (0.12 of it)" in only.text()


def test_spread_text_and_units():
    s = Spread.of([0.1234, 0.2, 0.15])
    assert s.median == 0.15 and s.text(".1f", " ms") == "0.1 ms [0.1-0.2]"
    assert s.scaled(1000).text(".0f", " ms") == "150 ms [123-200]"
    with pytest.raises(ValueError, match="no values"):
        Spread.of([])


def test_speedup_fields_keep_min_median_and_add_the_words():
    f = speedup_fields([1.0, 1.0, 1.0], [0.9, 1.05, 0.95], bound=4.0)
    assert f["labels"] == [WITHIN_NOISE] and f["speedup_spread"][0] < 1 < f["speedup_spread"][1]
    assert f["speedup_min"] == pytest.approx(1 / 0.9)


def test_load_average_is_recorded():
    load = load_average()
    assert load is None or (len(load) == 3 and all(x >= 0 for x in load))
    rounds = interleaved_rounds({"a": lambda: None}, 3)
    assert rounds.to_dict()["load_average_before"] == rounds.load_before


def test_timed_call_times_steps_and_attention_and_removes_its_hooks(pipelines):
    """`TimedCall` around a pipeline call: one time per denoiser step, the attention seconds of the given
    modules, the wall time; every hook gone afterwards, also when the call fails (the cache checks it)."""
    from diffattn.report.runner import TimedCall, resolve_module
    from diffattn.tiny.specs import tiny_call_kwargs

    pipe = pipelines.pipe("tiny-sd")
    name = next(n for n, m in pipe.unet.named_modules() if type(m).__name__ == "Attention")
    modules = {f"unet.{name}": resolve_module(pipe, f"unet.{name}")}
    kw = tiny_call_kwargs("tiny-sd")
    with TimedCall(pipe, "cpu", modules) as timed:
        pipe(**kw)
    assert len(timed.step_s) == kw["num_inference_steps"] and all(t > 0 for t in timed.step_s)
    assert timed.wall_s >= sum(timed.step_s) > 0 and timed.attention_s[f"unet.{name}"] > 0
    with pytest.raises(RuntimeError, match="stop"), TimedCall(pipe, "cpu", modules) as failed:
        raise RuntimeError("stop")
    assert failed.step_s == [] and failed.attention_s == {f"unet.{name}": 0.0}
