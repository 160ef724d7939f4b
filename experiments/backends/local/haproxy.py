"""The ALB, emulated by a real HAProxy on loopback, generated from the Variant.

ALB -> HAProxy mapping: round_robin -> `balance roundrobin`, least_outstanding_requests ->
`balance leastconn` (both count requests in flight per target); the target group's health
check -> `option httpchk GET <path>` + `http-check expect status 200` (the ALB's default
matcher) with `inter` = interval, `fall` = unhealthy threshold, `rise` = healthy threshold and
`timeout check` = timeout; no healthy target -> HAProxy's own 503; idle timeout 60 s like the
ALB's default. The stats socket (`show stat`) gives per-target state.

Under time dilation d (cpu_scale s = 1/d) the health check's interval and timeout and the
idle timeouts are stretched by d: a target that needs 3 s to answer `/health` on a slowed box
would answer in 1 s on the real one, and must not be marked down for it. The thresholds
(counts of checks) are not times and stay as configured.

File descriptors: HAProxy needs two per connection (client and server side) plus a few of
its own, and refuses to start when its hard `nofile` limit is below that (`Cannot raise FD
limit to 8212, limit is 1024`). Many hosts hand processes a hard limit of 1024 or 4096, so
`maxconn` is the ALB-like 4096 only where the hard limit allows it, else what fits.
"""

from __future__ import annotations

import contextlib
import csv
import io
import resource
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from experiments.errors import UserError
from stacks.variant import Variant

IDLE_TIMEOUT_S = 60
"""The ALB's default idle timeout."""
BALANCE = {"round_robin": "roundrobin", "least_outstanding_requests": "leastconn"}
MAXCONN = 4096
"""Connections HAProxy accepts at once where the fd limit allows (more than any load here)."""
FD_RESERVE = 64
"""Descriptors HAProxy keeps for itself beyond two per connection (listeners, the stats
socket, health checks, pollers): measured 20 with three targets on HAProxy 2.6."""
MIN_MAXCONN = 64


def fd_hard_limit() -> int | None:
    """This process's hard `nofile` limit (HAProxy inherits it); None = unlimited."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def maxconn_for(fd_hard: int | None) -> int:
    """The largest `maxconn` (at most MAXCONN) whose descriptors fit under `fd_hard`."""
    if fd_hard is None:
        return MAXCONN
    fits = (fd_hard - FD_RESERVE) // 2
    if fits < MIN_MAXCONN:
        raise UserError(f"the open-files hard limit is {fd_hard}, too low for HAProxy (it needs "
                        f"at least {2 * MIN_MAXCONN + FD_RESERVE}); raise it (ulimit -Hn, or "
                        "LimitNOFILE= in the systemd unit) and run again.")
    return min(MAXCONN, fits)


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None)
    if not found:
        raise UserError("haproxy is not installed but variants with loadBalancer: true need it "
                        "locally; install it (Debian/Ubuntu: apt-get install haproxy).")
    return found


def _ms(seconds: float, dilation: float) -> str:
    """HAProxy time: whole seconds as `7s`, else milliseconds (dilated values rarely are)."""
    ms = round(seconds * dilation * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def render_config(variant: Variant, bind_host: str, bind_port: int, targets: list[Target],
                  stats_socket: Path, dilation: float = 1.0, maxconn: int | None = None) -> str:
    """The config; `maxconn` defaults to what this process's hard fd limit allows."""
    if not dilation >= 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    hc = variant.health_check
    idle = _ms(IDLE_TIMEOUT_S, dilation)
    lines = [
        "global",
        f"    stats socket {stats_socket} mode 600 level admin",
        f"    maxconn {maxconn_for(fd_hard_limit()) if maxconn is None else maxconn}",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        f"    timeout client {idle}",
        f"    timeout server {idle}",
        f"    timeout check {_ms(hc.timeout_s, dilation)}",
        "    option http-keep-alive",
        "",
        "frontend alb",
        f"    bind {bind_host}:{bind_port}",
        "    default_backend targets",
        "",
        "backend targets",
        f"    balance {BALANCE[variant.lb_algorithm]}",
        f"    option httpchk GET {hc.path}",
        "    http-check expect status 200",
        f"    default-server inter {_ms(hc.interval_s, dilation)} fall {hc.unhealthy_threshold} "
        f"rise {hc.healthy_threshold}",
    ]
    lines += [f"    server {t.name} {t.host}:{t.port} check" for t in targets]
    return "\n".join(lines) + "\n"


def show_stat(stats_socket: Path, timeout_s: float = 1.0) -> list[dict[str, str]]:
    """`show stat` rows (CSV with a `# ` header) from the admin socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(stats_socket))
        s.sendall(b"show stat\n")
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    text = b"".join(chunks).decode(errors="replace").lstrip("# ")
    return list(csv.DictReader(io.StringIO(text)))


def target_states(stats_socket: Path) -> dict[str, str]:
    """Target name -> HAProxy status (UP, DOWN, `UP 1/2` while going down, NOLB, MAINT...)."""
    with contextlib.suppress(OSError):
        return {row["svname"]: row["status"] for row in show_stat(stats_socket)
                if row.get("pxname") == "targets" and row.get("svname") not in
                ("FRONTEND", "BACKEND")}
    return {}
