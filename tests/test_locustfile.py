"""The shop's locustfile (and the bring-your-own test app) driven by real Locust against real
Gunicorn. Locust always runs in a child process: importing it here would gevent-patch pytest."""

from __future__ import annotations

import ast
import csv
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.procs import free_port
from shop.catalog import CATEGORIES, SEARCH_TERMS
from shop.serve import PROJECT_DIR, Server, gunicorn
from stacks.variant import AppSource, GunicornSettings, Variant

LOCUSTFILE = PROJECT_DIR / "shop" / "locustfile.py"
BYO_DIR = PROJECT_DIR / "tests" / "fixtures" / "byo_app"
ROUTES = {"/products/?page", "/products/[id]", "/search/", "/cart/", "/orders/",
          "/products/?all=1"}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("locustshop")
    env = {"SCALELAB_DATA_DIR": str(data)}
    subprocess.run([sys.executable, "-m", "shop", "seed", "--products", "2000"], cwd=PROJECT_DIR,
                   env={**os.environ, **env}, check=True, capture_output=True, timeout=120)
    port = free_port()
    variant = Variant(name="locust-test", gunicorn=GunicornSettings(
        workers=2, threads=4, worker_class="gthread"))
    with gunicorn(variant.gunicorn_args(f"127.0.0.1:{port}"), port, data / "gunicorn.log",
                  env=env) as server:
        yield server


def _locust(*args: str, env: dict[str, str] | None = None, cwd: Path = PROJECT_DIR,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "locust", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          check=False)


def _stats(prefix: Path) -> dict[str, tuple[int, int]]:
    """Name -> (requests, failures) from Locust's --csv output."""
    with open(f"{prefix}_stats.csv", newline="") as fh:
        return {row["Name"]: (int(row["Request Count"]), int(row["Failure Count"]))
                for row in csv.DictReader(fh)}


_INSPECT = """
import importlib.util, inspect, json, sys
from locust import FastHttpUser, User
spec = importlib.util.spec_from_file_location("lf", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
users = [c for c in vars(mod).values() if inspect.isclass(c) and issubclass(c, User)
         and c.__module__ == "lf" and not getattr(c, "abstract", False)]
weights = {}
for t in users[0].tasks:
    weights[t.__name__] = weights.get(t.__name__, 0) + 1
print(json.dumps({"users": [c.__name__ for c in users],
                  "fast": all(issubclass(c, FastHttpUser) for c in users), "weights": weights}))
"""


def _inspect(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _INSPECT, str(LOCUSTFILE)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env}, check=False)


def test_one_fast_user_class_and_all_weight_knob() -> None:
    default = json.loads(_inspect({}).stdout)
    assert default["users"] == ["Shopper"] and default["fast"]
    assert default["weights"]["all_products"] == 1
    assert sum(default["weights"].values()) == 100
    assert json.loads(_inspect({"SHOP_ALL_WEIGHT": "7"}).stdout)["weights"]["all_products"] == 7
    assert "all_products" not in json.loads(_inspect({"SHOP_ALL_WEIGHT": "0"}).stdout)["weights"]
    bad = _inspect({"SHOP_ALL_WEIGHT": "-2"})
    assert bad.returncode != 0 and "SHOP_ALL_WEIGHT must be a whole number >= 0" in bad.stderr


_SEARCHES = """
import importlib.util, json, sys
from types import SimpleNamespace
spec = importlib.util.spec_from_file_location("lf", sys.argv[1])
lf = importlib.util.module_from_spec(spec); spec.loader.exec_module(lf)
urls = []
shopper = SimpleNamespace(client=SimpleNamespace(get=lambda url, name: urls.append(url)))
for _ in range(5 * len(lf.SEARCH_TERMS)):
    lf.Shopper.search(shopper)
print(json.dumps(urls))
"""


def test_search_terms_are_dealt_so_each_round_holds_every_term_once() -> None:
    """A scan costs 67-188 ms of CPU by term: drawn at random, a step's CPU per request
    depended on the terms it happened to draw."""
    done = subprocess.run([sys.executable, "-c", _SEARCHES, str(LOCUSTFILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    terms = [url.split("q=", 1)[1] for url in json.loads(done.stdout)]
    rounds = [terms[i:i + len(SEARCH_TERMS)] for i in range(0, len(terms), len(SEARCH_TERMS))]
    assert len(rounds) == 5 and all(sorted(r) == sorted(SEARCH_TERMS) for r in rounds), rounds
    assert len({tuple(r) for r in rounds}) > 1  # ...in a fresh order each round


def test_locustfile_vocabulary_matches_the_seeded_shop() -> None:
    """The locustfile may import only locust, so it repeats slugs; keep them in step."""
    tree = ast.parse(LOCUSTFILE.read_text())
    consts = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
              if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
              and n.targets[0].id in ("CATEGORIES", "SEARCH_TERMS")}
    assert consts["CATEGORIES"] == tuple(slug for slug, _ in CATEGORIES)
    assert consts["SEARCH_TERMS"] == SEARCH_TERMS
    imports = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
               for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree)
                                    if isinstance(n, ast.ImportFrom) and n.module}
    assert imports <= {"__future__", "os", "random", "uuid", "locust"}


def test_headless_cli_run_has_zero_failures(shop: Server, tmp_path: Path) -> None:
    """A user's habit: plain `locust -f shop/locustfile.py --headless ... --host URL`."""
    done = _locust("-f", str(LOCUSTFILE), "--headless", "-u", "10", "-r", "10", "-t", "5s",
                   "--host", shop.url, "--csv", str(tmp_path / "cli"), "--only-summary",
                   env={"SHOP_ALL_WEIGHT": "10"})
    assert done.returncode == 0, done.stderr[-2000:]
    stats = _stats(tmp_path / "cli")
    requests, failures = stats.pop("Aggregated")
    assert requests >= 20 and failures == 0, stats
    assert set(stats) <= ROUTES and {"/products/?page", "/products/[id]"} <= set(stats)


_PACED = """
import json, sys, gevent
from locust import constant_throughput, events
from locust.env import Environment
import importlib.util
spec = importlib.util.spec_from_file_location("lf", sys.argv[1])
lf = importlib.util.module_from_spec(spec); spec.loader.exec_module(lf)
calls = {"tasks": 0}
def counted(fn):
    def run(user):
        calls["tasks"] += 1
        return fn(user)
    run.__name__ = fn.__name__
    return run
user = lf.Shopper
user.tasks = [counted(t) for t in user.tasks]
user.wait_time = constant_throughput(20)  # what the experiment driver does
user.host = sys.argv[2]
env = Environment(user_classes=[user], events=events)
runner = env.create_local_runner()
runner.start(8, spawn_rate=8)
gevent.sleep(4)
runner.quit()
per_name = {n: (s.num_requests, s.num_failures) for (n, _m), s in env.stats.entries.items()}
print(json.dumps({"tasks": calls["tasks"], "requests": env.stats.total.num_requests,
                  "failures": env.stats.total.num_failures, "names": per_name}))
"""


def test_driver_pacing_gives_one_request_per_task(shop: Server) -> None:
    """With wait_time replaced by constant pacing, tasks run = requests made (give or take the
    tasks cut off at stop), every route is hit, and nothing fails."""
    done = subprocess.run([sys.executable, "-c", _PACED, str(LOCUSTFILE), shop.url],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SHOP_ALL_WEIGHT": "5"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failures"] == 0, result
    assert result["requests"] >= 200
    assert abs(result["tasks"] - result["requests"]) <= 8, result
    assert set(result["names"]) == ROUTES, result["names"]


# ---- bring your own app -------------------------------------------------------------------

@pytest.fixture()
def byo(tmp_path: Path) -> Iterator[Server]:
    """The fixture app served the way the runner would: cwd = app dir, its module:callable."""
    port = free_port()
    variant = Variant(name="byo", gunicorn=GunicornSettings(workers=1, threads=2,
                                                            worker_class="gthread"),
                      app=AppSource(path=str(BYO_DIR), wsgi="app:application",
                                    health_path="/health", locustfile="locustfile.py"))
    with gunicorn(variant.gunicorn_args(f"127.0.0.1:{port}"), port, tmp_path / "byo.log",
                  cwd=BYO_DIR, health_path="/health") as server:
        yield server


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_byo_hog_holds_its_memory_for_the_request(byo: Server) -> None:
    (worker,) = byo.worker_pids()
    idle = _rss_mib(worker)
    answers: list[dict[str, object]] = []
    request = threading.Thread(target=lambda: answers.append(json.load(
        urllib.request.urlopen(f"{byo.url}/hog?mib=96&hold=1.5", timeout=30))))
    request.start()
    peak = idle
    while request.is_alive():
        peak = max(peak, _rss_mib(worker))
        time.sleep(0.05)
    assert answers == [{"allocated_mib": 96, "held_s": 1.5, "pid": worker}]
    assert peak - idle >= 90


def test_byo_locustfile_runs_with_zero_failures(byo: Server, tmp_path: Path) -> None:
    done = _locust("-f", "locustfile.py", "--headless", "-u", "4", "-r", "4", "-t", "3s",
                   "--host", byo.url, "--csv", str(tmp_path / "byo"), "--only-summary",
                   cwd=BYO_DIR)
    assert done.returncode == 0, done.stderr[-2000:]
    requests, failures = _stats(tmp_path / "byo")["Aggregated"]
    assert requests >= 10 and failures == 0
