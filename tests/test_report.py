"""The report, built from the recorded run fixture, opened in a real headless Chromium."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import RUN_FIXTURE
from PIL import Image

from experiments.cli import main
from experiments.errors import UserError
from experiments.model import StepResult
from experiments.report import build_report

FIXTURE = RUN_FIXTURE
VARIANTS = ["micro", "micro-swap", "scale-up", "scale-out"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    run = tmp_path_factory.mktemp("report") / "20261125-100000-local"
    shutil.copytree(FIXTURE, run)
    return run, build_report(run)


def test_report_files_written(built: tuple[Path, list[Path]]) -> None:
    run, paths = built
    assert [p.name for p in paths] == ["summary.md", "summary.csv", "summary.json",
                                       "report.html"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert all(p.parent == run for p in paths)


def test_csv_and_markdown_agree_with_summary_json(built: tuple[Path, list[Path]]) -> None:
    run, _ = built
    summary = json.loads((run / "summary.json").read_text())
    rows = list(csv.DictReader(io.StringIO((run / "summary.csv").read_text())))
    assert [r["variant"] for r in rows] == [v["name"] for v in summary["variants"]] == VARIANTS
    md = (run / "summary.md").read_text()
    for row, v in zip(rows, summary["variants"], strict=True):
        assert float(row["capacity_rps"]) == v["capacity_rps"]
        assert float(row["p95_ms_at_capacity"]) == v["p95_ms_at_capacity"]
        assert float(row["survival_s"]) == v["survival"]["seconds"]
        assert row["failure_kind"] == v["failure"]["kind"]
        assert float(row["hourly_usd"]) == v["cost"]["hourly_usd"]
        assert float(row["monthly_usd"]) == v["cost"]["monthly_usd"]
        assert float(row["usd_per_million_requests"]) == v["cost"]["usd_per_million_requests"]
        line = next(x for x in md.splitlines()
                    if x.startswith(f"| {v['name']} ") or x.startswith(f"| **{v['name']}**"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == f"{v['capacity_rps']:,.1f}"
        assert cells[3] == f"{v['p95_ms_at_capacity']:,.0f} ms"
        assert cells[5] == f"`{v['failure']['kind']}`"
        assert cells[6] == f"${v['cost']['hourly_usd']:,.4f}"
        assert cells[8] == f"${v['cost']['usd_per_million_requests']:,.3f}"
        for evidence in v["failure"]["evidence"]:
            assert evidence in md
    assert "cpu_scale 0.5" in md and "emulated" in md


def test_html_is_self_contained(built: tuple[Path, list[Path]]) -> None:
    run, _ = built
    html = (run / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']https?://""", html)
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 1 + 2 * len(VARIANTS)  # cost chart + rate and timeline per variant
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            assert img.format == "PNG" and img.width > 500 and img.height > 250
    assert "cpu_scale 0.5" in html and "Emulated capacities" in html
    assert "most capacity per dollar" in html.lower()


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_report_in_headless_chromium(built: tuple[Path, list[Path]], tmp_path: Path) -> None:
    run, _ = built
    url = (run / "report.html").as_uri()
    dom = _chromium(["--dump-dom", url], tmp_path).stdout
    assert '<table>' in dom and "<th>variant</th>" in dom
    rows = re.findall(r'<tr class="(?:best)?">\s*<td><b>([^<]+)</b>', dom)
    assert rows == VARIANTS
    ids = set(re.findall(r'<img class="chart" id="([^"]+)"', dom))
    assert ids == {"chart-cost", *(f"chart-rate-{v}" for v in VARIANTS),
                   *(f"chart-timeline-{v}" for v in VARIANTS)}

    shot = tmp_path / "report.png"
    _chromium([f"--screenshot={shot}", "--window-size=1400,3000", url], tmp_path)
    with Image.open(shot) as img:
        assert img.size == (1400, 3000)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20) or []
        assert len(colors) > 500  # charts and text rendered, not a blank page


def test_report_command_prints_the_paths(built: tuple[Path, list[Path]],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = built
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.split() == [str(run / n) for n in
                                               ("summary.md", "summary.csv", "summary.json",
                                                "report.html")]


def test_bad_run_dirs_are_one_sentence(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match="does not exist"):
        build_report(tmp_path / "missing")
    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old)
    info = json.loads((old / "run.json").read_text())
    (old / "run.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(UserError, match="another scalelab version"):
        build_report(old)
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scalelab: run folder") and "\n" not in err


FIT_PROBE = """<script>
  const table = document.getElementById('comparison-table');
  const card = document.getElementById('comparison');
  const style = getComputedStyle(card);
  const inner = card.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const probe = document.createElement('div');
  probe.id = 'fit-probe';
  probe.textContent = 'table=' + table.scrollWidth + ' card=' + Math.floor(inner);
  document.body.appendChild(probe);
</script></body>"""


def _stressed_copy(src: Path, dst: Path) -> Path:
    """The fixture with the widest figures a run can carry: big capacities, an interval, a
    measured sustained capacity and the longest failure name."""
    shutil.copytree(src, dst)
    for name in VARIANTS:
        path = dst / name / "result.json"
        data = json.loads(path.read_text())
        data.update(capacity_rps=12345.67, sustained_capacity_rps=1234.5,
                    capacity_ci95=[11000.25, 13500.75], p95_ms_at_capacity=12345.6)
        data["failure"]["kind"] = "cpu_credits_exhausted"
        data["cost"]["monthly_usd"] = 123456.78
        path.write_text(json.dumps(data))
    build_report(dst)
    return dst


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_comparison_table_fits_its_card_at_1400px(built: tuple[Path, list[Path]],
                                                  tmp_path: Path) -> None:
    run, _ = built
    stressed = _stressed_copy(FIXTURE, tmp_path / "stressed")
    assert "≈ 24,691.3 AWS" in (stressed / "report.html").read_text()  # 12,345.67 / 0.5
    for folder in (run, stressed):
        page = tmp_path / f"probe-{folder.name}.html"
        page.write_text((folder / "report.html").read_text().replace("</body>", FIT_PROBE))
        dom = _chromium(["--dump-dom", "--window-size=1400,1000", page.as_uri()], tmp_path).stdout
        found = re.search(r'id="fit-probe">table=(\d+) card=(\d+)<', dom)
        assert found, dom[-500:]
        table, card = int(found.group(1)), int(found.group(2))
        assert table <= card, f"{folder.name}: the table is {table} px wide in a {card} px card"


def test_estimates_in_every_report_form(built: tuple[Path, list[Path]]) -> None:
    run, _ = built
    summary = json.loads((run / "summary.json").read_text())
    scale = summary["cpu_scale"]
    rows = {r["variant"]: r for r in csv.DictReader(io.StringIO((run / "summary.csv").read_text()))}
    html = (run / "report.html").read_text()
    md = (run / "summary.md").read_text()
    for v in summary["variants"]:
        est = v["aws_estimate"]
        assert est["capacity_rps"] == pytest.approx(v["capacity_rps"] / scale, abs=0.01)
        assert est["p95_ms_at_capacity"] == pytest.approx(v["p95_ms_at_capacity"] * scale, abs=0.1)
        assert float(rows[v["name"]]["aws_capacity_rps"]) == est["capacity_rps"]
        assert f"≈ {est['capacity_rps']:,.1f} AWS" in html
        assert f"| {v['name']} | {est['capacity_rps']:,.1f} |" in md
    assert 'id="aws-estimates"' in html and "loopback has no network latency" in html
    assert "Assumptions:" in md and "disk I/O (swap) is not dilated" in md


def test_an_aws_run_says_its_credit_metrics_are_five_minute() -> None:
    from experiments.report.tables import AWS_SIGNALS_NOTE, run_context

    assert AWS_SIGNALS_NOTE in run_context({"backend": "aws"}, {})
    assert AWS_SIGNALS_NOTE not in run_context({"backend": "local", "cpu_scale": 0.33}, {})


def test_cpu_bound_sentence_and_capacity_interval_in_the_report(tmp_path: Path) -> None:
    """summary.json's CPU-bound figures become one sentence on the page and in summary.md; a
    `--repeat` interval is drawn as a band on the rate chart and an error bar on the cost chart."""
    from matplotlib.patches import Polygon, Rectangle

    from experiments.report import plots
    from experiments.report.tables import variant_rows
    from experiments.results import RunStore

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    path = run / "micro" / "result.json"
    data = json.loads(path.read_text())
    data.update(capacity_rps=12.0, capacity_runs=[11.0, 12.0, 12.5], capacity_ci95=[10.5, 13.5],
                cpu_bound_rps=13.0, demand_cpu_ms=25.0, capacity_pct_of_cpu_bound=91.5)
    path.write_text(json.dumps(data))
    build_report(run)
    sentence = "12 req/s = 92 % of the CPU bound (served 11.9 of 13 req/s = 0.33 cores / 25 ms"
    md = (run / "summary.md").read_text()
    assert "## Capacity and the CPU bound" in md and f"- micro: {sentence}" in md
    html = (run / "report.html").read_text()
    assert html.count(sentence) == 2  # the summary list and micro's card
    assert "micro-swap: " not in md.split("## Capacity and the CPU bound")[1].split("##")[0]

    store = RunStore.open(run)
    steps = [StepResult.from_dict({"p50_ms": 0.0, "p99_ms": 0.0, "error_rate": 0.0, **s})
             for s in store.load_json("micro", "steps.json")]
    fig = plots.rate_figure("micro", steps, 500.0, 12.0, (10.5, 13.5))
    for ax in fig.axes:
        bands = [p for p in ax.patches if isinstance(p, (Polygon, Rectangle))]
        spans = [(min(x for x, _ in b.get_xy()), max(x for x, _ in b.get_xy())) if
                 isinstance(b, Polygon) else (b.get_x(), b.get_x() + b.get_width())
                 for b in bands]
        assert any(lo == pytest.approx(10.5) and hi == pytest.approx(13.5) for lo, hi in spans)
    assert not [p for ax in plots.rate_figure("micro", steps, 500.0, 12.0).axes
                for p in ax.patches]

    rows = variant_rows(store.write_summary())
    cost = plots.cost_capacity_figure(rows, None)
    bars = [c for c in cost.axes[0].containers if c.has_yerr]
    assert len(bars) == 1  # only micro has an interval
    segments = bars[0].lines[2][0].get_segments()
    assert [tuple(p[1] for p in seg) for seg in segments] == [pytest.approx((10.5, 13.5))]


def test_an_unconfirmed_capacity_says_so_wherever_it_is_shown(tmp_path: Path) -> None:
    """Every confirmation hold failed: the capacity is the highest search step that passed and
    reads `unconfirmed` in summary.md, report.html, summary.csv and the console table."""
    from rich.console import Console

    from experiments.report.console import print_summary_table
    from experiments.results import RunStore, VariantSummary

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    path = run / "micro" / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "capacity_confirmed": False}))
    build_report(run)
    md_rows = {line.split("|")[1].strip(" *★"): line for line in  # the measured table
               (run / "summary.md").read_text().splitlines()
               if line.startswith("| ") and " × " in line}
    assert "unconfirmed" in md_rows["micro"] and "unconfirmed" not in md_rows["micro-swap"]
    html = (run / "report.html").read_text()
    assert html.count(" unconfirmed</b>") == 2  # the comparison table and micro's card
    csv_rows = {r["variant"]: r for r in csv.DictReader((run / "summary.csv").open())}
    assert csv_rows["micro"]["capacity_confirmed"] == "False"
    summary = RunStore.open(run).write_summary()
    out = Console(record=True, width=250)
    print_summary_table(summary, [VariantSummary.from_dict(v) for v in summary["variants"]], out)
    assert out.export_text().count("unconfirmed") == 1


def test_time_spent_by_stage_in_the_report() -> None:
    """Where a run's time went: each variant's total and its stages (those of a second or more),
    in the report's run context; nothing when the run recorded no stage times."""
    from experiments.report.tables import run_context, stage_times

    seconds = {"deploy": 9.4, "capacity": 62.0, "sustained": 35.2, "survival": 101.3,
               "observe": 3.9, "diagnose": 0.2, "price": 0.0}
    assert stage_times(seconds) == ("3:32 (deploy 0:09, capacity 1:02, sustained 0:35, "
                                    "survival 1:41, signals + teardown 0:04)")
    assert stage_times({}) == stage_times(None) == ""
    summary = {"backend": "local", "cpu_scale": 0.33,
               "variants": [{"name": "micro", "stage_seconds": seconds},
                            {"name": "scale-up", "stage_seconds": {"capacity": 61.0}}]}
    (line,) = [x for x in run_context(summary, {}) if x.startswith("Time spent")]
    assert "micro 3:32 (deploy 0:09," in line and "; scale-up 1:01 (capacity 1:01)." in line
    assert not [x for x in run_context({"variants": [{"name": "micro"}]}, {})
                if x.startswith("Time spent")]

