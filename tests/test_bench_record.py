"""The benchmark suite's arithmetic and rendering (no timing): per-round ratios, the verdict
rule, the disturbed-machine refusal and the re-run comparison."""

import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import render_results  # noqa: E402


def test_ratios_are_per_round_and_a_winner_needs_every_round_on_one_side():
    base = [10.0, 12.0, 30.0, 11.0, 10.0]
    fast = [5.0, 6.0, 15.0, 5.5, 5.0]  # half the time in every round, whatever the load
    r = harness.ratios(base, fast)
    assert r["rounds"] == [2.0] * 5 and r["median"] == 2.0
    assert harness.verdict(r) == "faster" == render_results.verdict(r)
    mixed = harness.ratios(base, [9.0, 13.0, 28.0, 12.0, 9.5])
    assert harness.verdict(mixed) == "unresolved" == render_results.verdict(mixed)
    assert harness.verdict(harness.ratios(fast, base)) == "slower"
    s = harness.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["median"] == 3.0 and s["spread"] == pytest.approx((4.6 - 1.4) / 3.0)


def _record(disturbed: bool, eager: list, other: list) -> dict:
    variants = {
        name: {"peer": None, **harness.summarize(t), "vs_baseline": harness.ratios(eager, t)}
        for name, t in (("eager", eager), ("fbgemm", other))
    }
    return {
        "schema": 1,
        "date": "2026-01-01 00:00:00 UTC",
        "device": "CPU (test)",
        "device_type": "cpu",
        "full_shapes": False,
        "versions": {"torch": "x"},
        "config": {
            "fields": 39,
            "embed_dim": 10,
            "rows": 100,
            "op_batch": 8,
            "op_sets": [4],
            "model_batch": 8,
            "model_scales": [1],
            "cross_layers": 4,
            "timing": "wall clock",
            "rounds": 3,
            "round_seconds": 0.03,
            "torch_threads": 1,
            "kernel_backends": [],
            "baseline": "eager",
        },
        "machine": {
            "loadavg_start": 0.1,
            "loadavg_end": 0.2,
            "cores": 2,
            "probe_start": None,
            "probe_end": None,
            "disturbed": disturbed,
            "problems": ["load"] if disturbed else [],
        },
        "cases": [
            {
                "case": "lookup fwd",
                "case_id": "lookup-fwd-M4",
                "kind": "op",
                "bytes": 1e6,
                "flops": 0,
                "pool": 2,
                "foreign_cpu": 0.0,
                "disturbed": False,
                "variants": variants,
            }
        ],
        "unavailable": [],
    }


def test_render_refuses_a_disturbed_record_unless_asked_and_marks_it(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_record(True, [2.0, 2.0, 2.0], [1.0, 1.0, 1.0])))
    out = tmp_path / "RESULTS.md"
    assert render_results.main([str(path), "-o", str(out)]) == 2 and not out.exists()
    assert render_results.main([str(path), "-o", str(out), "--allow-disturbed"]) == 0
    text = out.read_text()
    assert "Measured on a loaded machine" in text and "| fbgemm |" in text and "faster" in text


def test_rerun_counts_verdicts_that_reproduce(tmp_path):
    first = _record(False, [2.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    again = _record(False, [2.0, 2.0, 2.0], [1.0, 3.0, 1.5])  # unresolved the second time
    assert "1 were resolved in one run and unresolved in the other" in render_results.agreement(
        first, again
    )
    assert "1 got the same verdict" in render_results.agreement(first, first)
