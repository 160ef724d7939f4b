"""`python -m experiments ...` (also the `scalelab` console script).

Each subcommand's work lives in its own module, imported only when that subcommand runs,
so `cost` never pays for Locust and `report` never for Pulumi. Bad input surfaces as a
UserError: one sentence on stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import NoReturn

from experiments.errors import UserError

PROFILES = ("smoke", "quick", "standard")


def _number(text: str) -> float:
    """A finite number (ranges are the plan stage's, which states them)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _variant_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected variant names separated by commas")
    return names


class _Parser(argparse.ArgumentParser):
    """argparse with `prog: error: sentence.` as the last line (what the tests and users read)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scalelab",
        description="Add swap, scale up, or scale out? Deploy each stack (locally emulated or "
                    "on AWS with Pulumi), load-test it with Locust, find its capacity, say why "
                    "it broke, and put capacity next to cost.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print scalelab's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    run = sub.add_parser("run", help="deploy, load-test, diagnose and tear down each variant",
                         description="Measure every variant the same way and write "
                                     "results/<run-id>/ with summary.json and report.html.")
    run.add_argument("--backend", choices=("local", "aws"), default=None,
                     help="local: emulate each stack on this host with cgroups and HAProxy "
                          "(default); aws: deploy for real with the Pulumi Automation API")
    run.add_argument("--variants", type=_variant_list, default=None, metavar="A,B,...",
                     help="which stacks/Pulumi.<variant>.yaml to run (default: all four)")
    run.add_argument("--profile", choices=PROFILES, default=None,
                     help="smoke: every stage, briefly, to check the pipeline (its figures "
                          "are not measurements); quick: short steps for a demo (about four "
                          "to five minutes per variant on two cores); standard: longer steps and "
                          "survival test (default: quick)")
    run.add_argument("--slo-p95-ms", type=_number, default=None, metavar="MS",
                     help="a step passes only if its p95 latency is at most this many ms, "
                          "1 to 600000 (default 500)")
    run.add_argument("--out", type=Path, default=Path("results"), metavar="DIR",
                     help="where run folders go (default: results)")
    run.add_argument("--resume", metavar="RUN_ID", default=None,
                     help="finish an interrupted run (a folder name under --out): only the "
                          "variants it lacks are measured, with the run's own settings")
    run.add_argument("--max-usd", type=_number, default=None, metavar="X",
                     help="aws: refuse to deploy when the estimated cost of the run exceeds X")
    run.add_argument("--load-workers", type=_whole_number, default=None, metavar="N",
                     help="0: one Locust process (default); N: Locust's distributed mode with a "
                          "master and N worker processes, at most one per host core")
    run.add_argument("--cpu-scale", type=_number, default=None, metavar="F",
                     help="local: host cores per emulated vCPU, 0.01 to 1 (default: chosen so "
                          "the largest variant plus the load generator fit this host)")
    run.add_argument("--repeat", type=_whole_number, default=None, metavar="N",
                     help="independent capacity searches per variant, 1 to 20; capacity is "
                          "their median, with a 95 %% interval (default: 1 for quick, 3 for "
                          "standard)")
    run.add_argument("--threshold", action="append", default=None,
                     metavar="VARIANT:METRIC>=N",
                     help="a pass/fail criterion for CI, judged after the report is written, "
                          "e.g. 'scale-out:capacity_rps>=60' (repeatable; VARIANT may be '*'); "
                          "any failure exits with status 99")
    run.add_argument("--credits", choices=("launch", "exhausted"), default=None,
                     help="local: starting CPU credit balance of burstable instances "
                          "(default: launch)")
    run.add_argument("--survival-rps", type=_number, default=None, metavar="R",
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
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a run folder, e.g. results/20260101-120000-local")
    report.add_argument("--burst", action="store_true",
                        help="rank the ★ on burst capacity (default: sustained, i.e. what a "
                             "standard-mode burstable instance serves once its credits are gone)")

    compare = sub.add_parser("compare", help="baseline vs contender, per variant, with %% diff",
                             description="Compare two runs variant by variant: capacity "
                             "(Welch's t-test when both ran --repeat), p95, CPU per request, "
                             "survival and cost. Warns when the runs were not measured alike "
                             "(SLO, profile, cpu_scale, backend, app), and when a variant's CPU "
                             "per request moved more than 10 % between them (the host's speed: "
                             "a CPU-bound capacity moves with it). Writes the table as Markdown "
                             "into RUN_B.")
    compare.add_argument("run_a", type=Path, metavar="RUN_A", help="the baseline run folder")
    compare.add_argument("run_b", type=Path, metavar="RUN_B", help="the contender run folder")

    cost = sub.add_parser("cost", help="price the stacks without deploying anything",
                          description="Run the Pulumi program under mocks and price every "
                                      "resource it declares (no AWS account needed).")
    cost.add_argument("--variants", type=_variant_list, default=None, metavar="A,B,...",
                      help="which stacks/Pulumi.<variant>.yaml to price (default: all four)")
    cost.add_argument("--region", default=None, metavar="R",
                      help="price in this region instead of each stack's aws:region")
    cost.add_argument("--live-prices", action="store_true",
                      help="ask the AWS Price List API (needs AWS credentials); falls back to "
                           "the embedded prices with a note")
    cost.add_argument("--json", action="store_true", dest="as_json", help="print JSON")

    plan = sub.add_parser("plan", help="cheapest way to reach a target request rate",
                          description="For each strategy, the cheapest configuration reaching "
                                      "--target-rps on AWS, from a run's AWS-equivalent "
                                      "sustained capacities.")
    plan.add_argument("--target-rps", type=_number, required=True, metavar="N",
                      help="the request rate to serve, in requests per second")
    plan.add_argument("--from", dest="from_run", type=Path, default=None, metavar="RUN_DIR",
                      help="a run folder (default: the newest complete run under results/)")
    plan.add_argument("--burst", action="store_true",
                      help="plan on burst capacity (while CPU credits last) instead of the "
                           "sustained capacity")

    left = sub.add_parser("leftovers", help="find (and delete) what killed runs left behind",
                          description="List processes, cgroups, swapfiles, HAProxy (local) or "
                                      "tagged AWS resources (aws) that outlived their run.")
    left.add_argument("--backend", choices=("local", "aws"), default="local",
                      help="where to look: this host (default) or the AWS account")
    left.add_argument("--delete", action="store_true", help="remove them")
    return parser


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from experiments.runner import run_command

        _terminate_like_ctrl_c()
        return run_command(args)
    if args.command == "report":
        from experiments.report import build_report

        damage: list[str] = []
        for path in build_report(args.run_dir, damage, burst=True if args.burst else None):
            print(path)
        for sentence in damage:
            print(f"scalelab: warning: {sentence}", file=sys.stderr)
        return 1 if damage else 0
    if args.command == "compare":
        from experiments.report.compare import compare_command

        return compare_command(args.run_a, args.run_b)
    if args.command == "cost":
        from experiments.cost import cost_command
        from experiments.runplan import unique_names

        return cost_command(unique_names(args.variants), args.region, args.live_prices,
                            args.as_json)
    if args.command == "plan":
        from experiments.plan import plan_command

        return plan_command(args.target_rps, args.from_run, args.burst)
    if args.command == "leftovers":
        from experiments.backends import leftovers_command

        return leftovers_command(args.backend, args.delete)
    raise AssertionError(args.command)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scalelab")
    except PackageNotFoundError:
        return "unknown (not installed; run scripts/bootstrap.sh)"


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like parse_args, but an unknown flag is reported with its subcommand's usage."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = _subparser(parser, getattr(args, "command", None))
        (sub or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _subparser(parser: argparse.ArgumentParser, name: str | None
               ) -> argparse.ArgumentParser | None:
    for action in parser._actions:  # argparse keeps subparsers here; no public accessor
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return None


def main(argv: list[str] | None = None) -> int:
    """Every command's one error path: a sentence on stderr and an exit status, no traceback.

    2: the input is wrong (a flag, a file, a damaged run folder); 1: a measurement failed or
    an unexpected error (its traceback with SCALELAB_DEBUG=1); 130: Ctrl-C; a closed pipe
    (`... | head`) ends quietly.
    """
    from experiments.results import DamagedRunError

    try:
        args = parse_args(build_parser(), argv)
    except SystemExit as exc:  # usage error (2) or --help / --version (0): already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return dispatch(args)
    except DamagedRunError as exc:
        print(f"scalelab: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"scalelab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scalelab: interrupted; deployments were torn down and measured results kept.",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # what a shell reports for a program ended by SIGPIPE
    except OSError as exc:  # a user-supplied path the checks could not foresee
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"scalelab: {exc.strerror or exc}{where}; check the path and its permissions.",
              file=sys.stderr)
        return 2
    except Exception as exc:
        if os.environ.get("SCALELAB_DEBUG"):
            raise
        from experiments.results import last_file_read

        last = last_file_read()
        where = f" after reading {last}" if last else ""
        advice = "if that file is damaged, restore or remove it; " if last else ""
        print(f"scalelab: {args.command} failed{where}: {type(exc).__name__}: {exc}; {advice}"
              "SCALELAB_DEBUG=1 shows the traceback.", file=sys.stderr)
        return 1


def _terminate_like_ctrl_c() -> None:
    """`kill PID`, a CI job's timeout, `docker stop`, systemd: SIGTERM tears down and keeps the
    measured results exactly like Ctrl-C (Python's default would exit at once, leaving the
    deployment up and the run marked "running")."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _quiet_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush stays silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
