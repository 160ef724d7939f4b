"""`python -m experiments ...` (also the `scalelab` console script).

Each subcommand's work lives in its own module, imported only when that subcommand runs,
so `cost` never pays for Locust and `report` never for Pulumi. Bad input surfaces as a
UserError: one sentence on stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.errors import UserError

PROFILES = ("quick", "standard")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _variant_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected variant names separated by commas")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scalelab",
        description="Add swap, scale up, or scale out? Deploy each stack (locally emulated or "
                    "on AWS with Pulumi), load-test it with Locust, find its capacity, say why "
                    "it broke, and put capacity next to cost.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="deploy, load-test, diagnose and tear down each variant",
                         description="Measure every variant the same way and write "
                                     "results/<run-id>/ with summary.json and report.html.")
    run.add_argument("--backend", choices=("local", "aws"), default="local",
                     help="local: emulate each stack on this host with cgroups and HAProxy "
                          "(default); aws: deploy for real with the Pulumi Automation API")
    run.add_argument("--variants", type=_variant_list, default=None, metavar="A,B,...",
                     help="which stacks/Pulumi.<variant>.yaml to run (default: all four)")
    run.add_argument("--profile", choices=PROFILES, default="quick",
                     help="quick: short steps for a demo or CI (about a minute and a half per "
                          "variant); standard: longer steps and survival test (default: quick)")
    run.add_argument("--slo-p95-ms", type=_positive_float, default=500.0, metavar="MS",
                     help="a step passes only if its p95 latency is at most this (default 500)")
    run.add_argument("--out", type=Path, default=Path("results"), metavar="DIR",
                     help="where run folders go (default: results)")
    run.add_argument("--resume", metavar="RUN_ID", default=None,
                     help="finish an interrupted run: only the variants it lacks are measured")
    run.add_argument("--max-usd", type=_positive_float, default=None, metavar="X",
                     help="aws: refuse to deploy when the estimated cost of the run exceeds X")
    run.add_argument("--load-workers", type=_non_negative_int, default=0, metavar="N",
                     help="0: one Locust process (default); N: Locust's distributed mode with a "
                          "master and N worker processes")
    run.add_argument("--cpu-scale", type=_positive_float, default=None, metavar="F",
                     help="local: host cores per emulated vCPU (default: chosen so the largest "
                          "variant plus the load generator fit this host)")
    run.add_argument("--credits", choices=("launch", "exhausted"), default="launch",
                     help="local: starting CPU credit balance of burstable instances "
                          "(default: launch)")
    run.add_argument("--survival-rps", type=_positive_float, default=None, metavar="R",
                     help="the survival test's open-model rate, the same for every variant "
                          "(default: the lowest rate the smallest variant failed its capacity "
                          "search at; stored in run.json, so --resume reuses it)")
    run.add_argument("--burst", action="store_true",
                     help="rank the report's ★ most capacity per dollar on burst (credit) "
                          "capacity instead of the sustained one")
    run.add_argument("--locustfile", type=Path, default=None, metavar="FILE",
                     help="your own locustfile instead of the shop's shopper profile")
    run.add_argument("--app-dir", type=Path, default=None, metavar="DIR",
                     help="bring your own WSGI app: its directory (with --wsgi)")
    run.add_argument("--wsgi", default=None, metavar="MODULE:CALLABLE",
                     help="bring your own WSGI app: the callable Gunicorn serves")
    run.add_argument("--health-path", default=None, metavar="PATH",
                     help="bring your own WSGI app: the path that answers 200 when healthy")
    run.add_argument("--requirements", type=Path, default=None, metavar="FILE",
                     help="bring your own WSGI app: pip requirements it needs")

    report = sub.add_parser("report", help="rebuild summary.md / .csv / .json and report.html",
                            description="Rebuild the report files of a run from its results.")
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    report.add_argument("--burst", action="store_true",
                        help="rank the ★ on burst capacity (default: sustained, i.e. what a "
                             "standard-mode burstable instance serves once its credits are gone)")

    compare = sub.add_parser("compare", help="baseline vs contender, per variant, with %% diff",
                             description="Compare two runs variant by variant.")
    compare.add_argument("run_a", type=Path, metavar="RUN_A", help="the baseline run folder")
    compare.add_argument("run_b", type=Path, metavar="RUN_B", help="the contender run folder")

    cost = sub.add_parser("cost", help="price the stacks without deploying anything",
                          description="Run the Pulumi program under mocks and price every "
                                      "resource it declares (no AWS account needed).")
    cost.add_argument("--variants", type=_variant_list, default=None, metavar="A,B,...")
    cost.add_argument("--region", default=None, metavar="R",
                      help="price in this region instead of each stack's aws:region")
    cost.add_argument("--live-prices", action="store_true",
                      help="ask the AWS Price List API (needs AWS credentials); falls back to "
                           "the embedded prices with a note")
    cost.add_argument("--json", action="store_true", dest="as_json", help="print JSON")

    plan = sub.add_parser("plan", help="cheapest way to reach a target request rate",
                          description="For each strategy, the cheapest configuration reaching "
                                      "--target-rps, from measured capacities.")
    plan.add_argument("--target-rps", type=float, required=True, metavar="N")
    plan.add_argument("--from", dest="from_run", type=Path, default=None, metavar="RUN_DIR",
                      help="a run folder (default: the newest complete run under results/)")

    left = sub.add_parser("leftovers", help="find (and delete) what killed runs left behind",
                          description="List processes, cgroups, swapfiles, HAProxy (local) or "
                                      "tagged AWS resources (aws) that outlived their run.")
    left.add_argument("--backend", choices=("local", "aws"), default="local")
    left.add_argument("--delete", action="store_true", help="remove them")
    return parser


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from experiments.runner import run_command

        return run_command(args)
    if args.command == "report":
        from experiments.report import build_report

        for path in build_report(args.run_dir, burst=True if args.burst else None):
            print(path)
        return 0
    if args.command == "compare":
        from experiments.report.compare import compare_command

        return compare_command(args.run_a, args.run_b)
    if args.command == "cost":
        from experiments.cost import cost_command

        return cost_command(args.variants, args.region, args.live_prices, args.as_json)
    if args.command == "plan":
        from experiments.plan import plan_command

        return plan_command(args.target_rps, args.from_run)
    if args.command == "leftovers":
        from experiments.backends import leftovers_command

        return leftovers_command(args.backend, args.delete)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except UserError as exc:
        print(f"scalelab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scalelab: interrupted; deployments were torn down and measured results kept.",
              file=sys.stderr)
        return 130
