"""Measure the shop: seed time, worker memory (idle, after and during `?all=1`), and requests/s
of each endpoint on one core. Prints figures; asserts nothing (timings are the host's).

    .venv/bin/python benchmarks/bench_shop.py [--products 150000] [--duration 5]

Gunicorn runs with the Variant's own flags, 1 sync worker pinned to one core with `taskset`;
wrk (pinned to another core) drives each endpoint with randomized ids from a Lua script.
The last figure is the t2.micro question: two sync workers serving `?all=1` at the same time —
their peak RSS together against the micro's cgroup limit (1024 - OS reserve MiB).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from experiments.procs import free_port  # noqa: E402
from shop.catalog import DEFAULT_PRODUCTS  # noqa: E402
from shop.serve import Server, gunicorn  # noqa: E402
from stacks.variant import OS_RESERVE_MIB, GunicornSettings, Variant  # noqa: E402

WRK_SCRIPTS = {
    "/products/?page 1-10": """
request = function()
  return wrk.format("GET", "/products/?page=" .. math.random(1, 10))
end""",
    "/products/?page any": """
request = function()
  return wrk.format("GET", "/products/?page=" .. math.random(1, {pages}))
end""",
    "/products/?category": """
cats = {{"books", "garden", "toys", "pets", "audio", "shoes"}}
request = function()
  return wrk.format("GET", "/products/?category=" .. cats[math.random(1, #cats)] ..
                    "&page=" .. math.random(1, 50))
end""",
    "/products/[id]": """
request = function()
  return wrk.format("GET", "/products/" .. math.random(1, {products}) .. "/")
end""",
    "/search/": """
terms = {{"kettle", "wireless", "bamboo", "walnut", "guitar", "nothing-matches-this"}}
request = function()
  return wrk.format("GET", "/search/?q=" .. terms[math.random(1, #terms)])
end""",
    "/cart/": """
request = function()
  local body = string.format('{{"product_id": %d, "quantity": 1, "cart_id": "b%d"}}',
                             math.random(1, {products}), math.random(1, 1000000000))
  return wrk.format("POST", "/cart/", {{["Content-Type"] = "application/json"}}, body)
end""",
    "/orders/": """
request = function()
  local body = string.format('{{"items": [{{"product_id": %d, "quantity": 1}}, ' ..
                             '{{"product_id": %d, "quantity": 2}}]}}',
                             math.random(1, {products}), math.random(1, {products}))
  return wrk.format("POST", "/orders/", {{["Content-Type"] = "application/json"}}, body)
end""",
    "/healthz": """
request = function() return wrk.format("GET", "/healthz") end""",
}


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=600) as resp:
        return resp.read()


def wrk_rps(server: Server, route: str, script: str, duration: int, cpu: str,
            work: Path) -> tuple[float, float]:
    """(requests/s, mean latency ms) of one route; non-2xx answers are reported, not hidden."""
    lua = work / f"bench{abs(hash(route))}.lua"
    lua.write_text(script)
    out = subprocess.run(["taskset", "-c", cpu, "wrk", "-t1", "-c4", f"-d{duration}s",
                          "-s", str(lua), server.url], capture_output=True, text=True,
                         check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"    wrk for {route} saw errors:\n{out}", file=sys.stderr)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[latency.group(2)]
    return rps, float(latency.group(1)) * scale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=DEFAULT_PRODUCTS)
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per endpoint")
    parser.add_argument("--server-cpu", default="0", help="core Gunicorn is pinned to")
    parser.add_argument("--client-cpu", default="1", help="core wrk is pinned to")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("error: this benchmark needs wrk and taskset on PATH.", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-shop-"))
    env = {"SCALELAB_DATA_DIR": str(work)}
    try:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "shop", "seed", "--products", str(args.products)],
                       cwd=PROJECT_DIR, env={**os.environ, **env}, check=True,
                       stdout=subprocess.DEVNULL)
        seed_s = time.perf_counter() - started
        db_mib = (work / "shop.sqlite3").stat().st_size / 2**20
        print(f"products: {args.products}   seed: {seed_s:.1f} s (fresh, incl. interpreter "
              f"start and migrate)   database file: {db_mib:.0f} MiB")

        one = Variant(name="bench", gunicorn=GunicornSettings(workers=1))
        port = free_port()
        with gunicorn(one.gunicorn_args(f"127.0.0.1:{port}"), port, work / "one.log", env=env,
                      prefix=["taskset", "-c", args.server_cpu]) as server:
            (worker,) = server.worker_pids()
            get(server.url + "/healthz")
            print(f"idle sync worker RSS: {rss_mib(worker):.0f} MiB  "
                  f"(master: {rss_mib(server.process.pid):.0f} MiB)")
            pages = -(-args.products // 20)
            print(f"requests/s on one core (1 sync worker pinned to cpu {args.server_cpu}; "
                  f"wrk -t1 -c4 -d{args.duration}s on cpu {args.client_cpu}):")
            for route, template in WRK_SCRIPTS.items():
                script = template.format(products=args.products, pages=pages)
                rps, mean_ms = wrk_rps(server, route, script, args.duration, args.client_cpu,
                                       work)
                print(f"  {route:22s} {rps:8.1f} req/s   mean latency {mean_ms:8.1f} ms")
            warm = rss_mib(worker)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                size = len(get(server.url + "/products/?all=1"))
                times.append(time.perf_counter() - t0)
            mean_s = sum(times) / len(times)
            print(f"  {'/products/?all=1':22s} {1 / mean_s:8.2f} req/s   mean latency "
                  f"{mean_s * 1000:8.0f} ms   response {size / 2**20:.1f} MiB")
            print(f"worker RSS: warm before ?all=1 {warm:.0f} MiB, peak during ?all=1 "
                  f"(VmHWM) {rss_mib(worker, 'VmHWM'):.0f} MiB, after {rss_mib(worker):.0f} MiB")

        two = Variant(name="bench-micro", gunicorn=GunicornSettings(workers=2))
        port = free_port()
        with gunicorn(two.gunicorn_args(f"127.0.0.1:{port}"), port, work / "two.log",
                      env=env) as server:
            pids = [server.process.pid, *server.worker_pids()]
            threads = [threading.Thread(target=get, args=(server.url + "/products/?all=1",))
                       for _ in range(2)]
            for t in threads:
                t.start()
            peak = 0.0
            while any(t.is_alive() for t in threads):
                peak = max(peak, sum(rss_mib(p) for p in pids))
                time.sleep(0.02)
            limit = 1024 - OS_RESERVE_MIB
            verdict = "exceeds" if peak > limit else "fits in"
            print(f"2 sync workers, 2 concurrent ?all=1: peak RSS of master+workers "
                  f"{peak:.0f} MiB — {verdict} a t2.micro's {limit} MiB "
                  f"(1024 - {OS_RESERVE_MIB} OS reserve)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
