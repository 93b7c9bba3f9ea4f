"""`Plan`: exact JSON round trip, self-validation with clear errors, routing by module and timestep to the
sub-method each entry names (the same output as that method), and the bounds a plan reports per module."""

import json

import pytest
import torch

from diffattn.calibration import Bucket, ModelSignature, Plan, PlanEntry, PlanMethod
from diffattn.methods import AttendCall, get_method
from diffattn.report.bounds import module_flop_bound

SIG = (ModelSignature("transformer", "PixArtTransformer2DModel", "0123456789abcdef"),)
BUCKETS = (Bucket((0, 3), (999.0, 700.5)), Bucket((3, 7), (650.0, 1.0)))
A, B = "transformer.transformer_blocks.0.attn1", "transformer.transformer_blocks.1.attn1"


def _plan(**over) -> Plan:
    entries = (
        PlanEntry(A, 0, "dense", grid=(6, 10), attention_s=0.25, calls=3),
        PlanEntry(A, 1, "gna", (("window", (3, 5)), ("stride", 1)), (6, 10), 0.0312, 0.875, 4.0, 0.5, 4),
        PlanEntry(B, 0, "msw", (("window", (3, 5)), ("seed", 7)), (6, 10), 0.1, 0.5, 4.0, 0.25, 3),
        PlanEntry(B, 1, "proxy", (("window", (2, 5)),), (6, 10), 0.2, None, 2.5, 0.5, 4),
    )
    fields = dict(model=SIG, buckets=BUCKETS, entries=entries, target=(("max_attn_error", 0.25), ("bound", "flop")),
                  attention_share=0.4, attention_bound=1.8, end_to_end_bound=1.2, notes=("a note",),
                  info=(("methods", ("gna", "msw")), ("seconds", 1.5), ("inputs", 2)))  # fmt: skip
    return Plan(**{**fields, **over})


def test_json_round_trip_is_exact(tmp_path):
    plan = _plan()
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.to_json() == plan.to_json()
    assert Plan.load(plan.save(tmp_path / "sub" / "plan.json")) == plan
    data = json.loads(plan.to_json())
    assert data["entries"][1]["knobs"] == {"stride": 1, "window": [3, 5]}  # readable: plain JSON, knobs by name
    assert hash(again) == hash(plan)  # frozen all the way down


def test_describe_is_a_readable_table():
    text = _plan().describe()
    assert "2 of 2 modules sparse" in text and "end-to-end 1.20x" in text
    assert "gna stride=1 window=3,5 4.0x (err 0.031, mass 0.88)" in text
    assert "proxy window=2,5 2.5x (err 0.200)" in text
    assert "steps 0-2 (t 999-700)" in text and "note: a note" in text


@pytest.mark.parametrize(
    "over, error",
    [
        ({"model": ()}, r"needs the signature of the model"),
        ({"buckets": (BUCKETS[1], BUCKETS[0])}, r"noisiest \(highest timestep\) first"),
        ({"entries": (PlanEntry(A, 0, "dense"),)}, r"plan module .*attn1' has no entry for bucket\(s\) \[1\]"),
        ({"entries": (PlanEntry(A, 0, "dense"), PlanEntry(A, 0, "dense"))}, r"bucket 0 is given twice"),
        ({"entries": (PlanEntry(A, 2, "dense"),)}, r"bucket 2 is not one of 0..1"),
        ({"attention_bound": float("nan")}, r"must be finite"),
    ],
    ids=["no-model", "buckets-order", "missing-bucket", "twice", "bad-bucket", "nan-bound"],
)
def test_invalid_plans_are_refused(over, error):
    with pytest.raises(ValueError, match=error):
        _plan(**over)


def test_invalid_entries_are_refused():
    with pytest.raises(ValueError, match=r"'agent' cannot be planned; use one of \('dense', 'gna', 'msw', 'proxy'\)"):
        PlanEntry(A, 0, "agent")
    with pytest.raises(ValueError, match=r"window=0 must be >= 1"):
        PlanEntry(A, 0, "gna", (("window", 0),))
    with pytest.raises(TypeError, match=r"unknown knob\(s\) \['windw'\]"):
        PlanEntry(A, 0, "gna", (("windw", 3),))
    with pytest.raises(ValueError, match=r"error=-1 must be a finite number >= 0"):
        PlanEntry(A, 0, "dense", error=-1)
    with pytest.raises(ValueError, match=r"steps=\(2, 2\) must be \(start, stop\) ints"):
        Bucket((2, 2), (1.0, 0.0))
    with pytest.raises(ValueError, match=r"malformed diffattn plan: KeyError"):
        Plan.from_dict({"format": "diffattn.plan/1"})


def test_routes_each_call_to_its_entry():
    plan = _plan()
    method = PlanMethod(plan)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 60, 2, 8, generator=g) for _ in range(3))
    # the edge between the buckets is halfway: (700.5 + 650) / 2 = 675.25
    for layer, t, entry in [(A, 900.0, (A, 0)), (A, 100.0, (A, 1)), (B, 675.3, (B, 0)), (B, 675.2, (B, 1))]:
        call = AttendCall(grid=(6, 10), layer=layer, timestep=t)
        e = plan.entry(*entry)
        cls = get_method(e.method)
        want = cls(cls.make_config(None, **dict(e.knobs))).attend(q, k, v, call)
        assert torch.equal(method.attend(q, k, v, call), want), (layer, t)
    with pytest.raises(RuntimeError, match=r"has no readable timestep"):
        method.attend(q, k, v, AttendCall(grid=(6, 10), layer=A, timestep=None))


def test_bounds_per_module():
    method = PlanMethod(_plan())
    # A: dense on 3 calibration steps, N/15 = 4x on 4 steps -> 7 / (3 + 4 / 4)
    assert module_flop_bound(method, A, (6, 10)) == pytest.approx(7 / (3 + 4 / 4))
    assert method.describe_module(A) == "plan: dense | gna stride=1 window=3,5"
    assert _plan().sparse_modules == [A, B]


def test_another_grid_runs_but_warns_once(caplog):
    method = PlanMethod(_plan())
    q, k, v = (torch.randn(1, 48, 2, 8) for _ in range(3))
    for _ in range(2):
        method.attend(q, k, v, AttendCall(grid=(6, 8), layer=A, timestep=100.0))
    warnings = [r for r in caplog.records if "calibrated at (6, 10)" in r.getMessage()]
    assert len(warnings) == 1 and "attends a (6, 8) grid" in warnings[0].getMessage()
