"""AWS-equivalent estimates: capacity × 1/s, latency × s, survival × s, money follows capacity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.estimate import assumptions, host_cpu_model, variant_estimate, with_estimates

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"

ENTRY = {
    "name": "micro", "capacity_rps": 12.0, "capacity_ci95": [11.0, 13.5],
    "p95_ms_at_capacity": 300.0, "survival": {"seconds": 90.0, "held": False},
    "cost": {"hourly_usd": 0.02},
}


def test_scaling_rules_at_one_third() -> None:
    est = variant_estimate(ENTRY, 1 / 3, host_cpu="Test CPU")
    assert est is not None
    assert est["capacity_rps"] == pytest.approx(36.0)
    assert est["capacity_ci95"] == pytest.approx([33.0, 40.5])
    assert est["p95_ms_at_capacity"] == pytest.approx(100.0)
    assert est["survival_seconds"] == pytest.approx(30.0)
    # no sustained figure measured: falls back to capacity, and says so
    assert est["sustained_capacity_rps"] == est["capacity_rps"] and not est["sustained_measured"]
    # the price is the same, the capacity 3× → $ per million requests ÷ 3
    assert est["usd_per_million_requests"] == pytest.approx(0.02 / (36 * 3600) * 1e6, rel=1e-4)
    assert est["capacity_per_usd_hour"] == pytest.approx(36 / 0.02)
    assert any("Test CPU" in a for a in est["assumptions"])
    assert any("loopback" in a for a in est["assumptions"])
    assert any("disk I/O" in a for a in est["assumptions"])


def test_sustained_and_interval_forms() -> None:
    entry = {**ENTRY, "sustained_capacity_rps": 1.5, "capacity_ci95": {"low": 10, "high": 14}}
    est = variant_estimate(entry, 0.5, host_cpu="x")
    assert est is not None
    assert est["sustained_capacity_rps"] == 3.0 and est["sustained_measured"]
    assert est["capacity_ci95"] == [20.0, 28.0]
    assert est["sustained_capacity_per_usd_hour"] == pytest.approx(3.0 / 0.02)
    assert variant_estimate({**ENTRY, "capacity_ci95": "n/a"}, 0.5, host_cpu="x")[
        "capacity_ci95"] is None


def test_missing_figures_and_bad_scale() -> None:
    est = variant_estimate({"name": "x", "capacity_rps": None}, 0.5, host_cpu="x")
    assert est is not None and est["capacity_rps"] is None
    assert est["usd_per_million_requests"] is None
    assert variant_estimate(ENTRY, None) is None and variant_estimate(ENTRY, 0) is None
    aws = variant_estimate(ENTRY, None, backend="aws")
    assert aws is not None and aws["capacity_rps"] == 12.0 and aws["basis"] == "measured on AWS"
    assert aws["assumptions"] == []


def test_with_estimates_keeps_measured_keys(tmp_path: Path) -> None:
    summary = json.loads((FIXTURE / "summary.json").read_text())
    out = with_estimates(summary, host_cpu="Fixture CPU")
    assert out["host_cpu"] == "Fixture CPU"
    for before, after in zip(summary["variants"], out["variants"], strict=True):
        assert {k: after[k] for k in before} == before  # measured figures untouched
        est = after["aws_estimate"]
        assert est["capacity_rps"] == pytest.approx(before["capacity_rps"] / summary["cpu_scale"],
                                                    abs=0.01)
    assert "aws_estimate" not in summary["variants"][0]  # the input is not mutated


def test_host_cpu_model_reads_proc_format(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                    "model name\t: Intel(R) Xeon(R)   CPU @ 2.20GHz\n")
    assert host_cpu_model(info) == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    assert host_cpu_model(tmp_path / "missing") == "unknown"
    assert host_cpu_model() != ""  # the real host: a name or 'unknown', never empty
    assert "host CPU: Z" in assumptions("Z")[0]


def test_run_json_records_the_measuring_host_cpu(tmp_path: Path) -> None:
    """The estimate names the CPU of the host that measured, not of the one rebuilding."""
    import shutil

    from experiments import provenance
    from experiments.results import RunStore

    assert provenance.host()["cpu_model"] == host_cpu_model()
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    info = json.loads((run / "run.json").read_text())
    info["host"]["cpu_model"] = "Recorded CPU 9000"
    (run / "run.json").write_text(json.dumps(info))
    summary = RunStore.open(run).summary()
    assert summary["host_cpu"] == "Recorded CPU 9000"
    assert "host CPU: Recorded CPU 9000" in summary["variants"][0]["aws_estimate"]["assumptions"][0]


def _step(rps: float, passed: bool, host: float | None, server_cores: float | None) -> dict:
    return {"offered_rps": rps, "passed": passed, "host_busy": host, "duration_s": 20.0,
            "server_cpu_s": None if server_cores is None else server_cores * 20.0}


# scale-up (1 × 2 vCPU) at cpu_scale 0.66: a quota of 1.32 host cores. Figures from
# bench_dilation_stability's run (the 180 req/s step starved by a busy host).
SCALE_UP = {"name": "scale-up", "capacity_rps": 174.0, "vcpu": 2, "count": 1,
            "cost": {"hourly_usd": 0.0416}}


def test_a_capacity_bounded_by_a_saturated_host_is_flagged() -> None:
    entry = {**SCALE_UP, "steps": [_step(169, True, 0.999, 0.98), _step(174, True, 0.83, 1.22),
                                   _step(180, False, 1.0, 1.037), _step(190, False, 1.0, 1.005)]}
    est = variant_estimate(entry, 0.66, host_cpu="x")
    assert est is not None and est["host_saturated"] is True
    (warning,) = est["warnings"]
    assert "scale-up" in warning and "180 req/s" in warning
    assert "100% of its CPU busy" in warning and "1.04 of their 1.32 cores" in warning
    assert "lower bound" in warning
    assert est["capacity_rps"] == pytest.approx(174 / 0.66, abs=0.01)  # still reported


@pytest.mark.parametrize("steps", [
    # the bounding (lowest failing) step had headroom; a higher one did not: the box's own limit
    [_step(174, True, 0.8, 1.2), _step(180, False, 0.9, 1.3), _step(190, False, 1.0, 1.0)],
    # the host was saturated, but the box was at its own quota too: its failure is its own
    [_step(174, True, 0.8, 1.2), _step(180, False, 0.99, 1.30)],
    # a failure below capacity (the confirmation's retry) bounds nothing
    [_step(170, False, 1.0, 0.9), _step(174, True, 0.8, 1.2)],
    # older runs: no host_busy recorded
    [_step(174, True, None, 1.2), _step(180, False, None, 1.0)],
])
def test_a_capacity_the_box_itself_bounded_is_not_flagged(steps: list[dict]) -> None:
    est = variant_estimate({**SCALE_UP, "steps": steps}, 0.66, host_cpu="x")
    assert est is not None and est["host_saturated"] is False and est["warnings"] == []


def test_the_aws_backend_is_never_host_bound() -> None:
    entry = {**SCALE_UP, "steps": [_step(174, True, 0.8, 1.2), _step(180, False, 1.0, 1.0)]}
    aws = variant_estimate(entry, None, backend="aws")
    assert aws is not None and aws["host_saturated"] is False


def test_the_console_table_marks_a_host_bound_estimate_and_says_why() -> None:
    """Issue 11: the warning was in the report and summary.json, not where most people read the
    result — the table printed at the end of `run`."""
    from rich.console import Console

    from experiments.report.console import print_summary_table
    from experiments.results import VariantSummary

    summary = with_estimates(json.loads((FIXTURE / "summary.json").read_text()), "Test CPU")
    entries = summary["variants"]
    capacity = entries[0]["capacity_rps"]  # the step above it failed on a full host
    steps = [_step(capacity, True, 0.8, 0.3), _step(capacity * 1.1, False, 1.0, 0.1)]
    bound = variant_estimate({**entries[0], "steps": steps}, summary["cpu_scale"], "Test CPU")
    assert bound is not None and bound["host_saturated"]
    entries[0] = {**entries[0], "aws_estimate": bound}
    variants = [VariantSummary.from_dict(e) for e in entries]
    out = Console(record=True, width=250)
    print_summary_table(summary, variants, out)
    text = out.export_text()
    first, *others = variants
    assert f"≥ {bound['capacity_rps']:.1f} !" in text
    assert f"! {bound['warnings'][0][:60]}" in text.replace("\n  ", " ")
    for v in others:  # not host-bound: plain figures, no mark
        assert f"{v.aws_estimate['capacity_rps']:.1f} !" not in text
    assert text.count("lower bound") == 1
