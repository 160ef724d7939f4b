"""Render one instance's cloud-init `#cloud-config` from a Variant.

Every step is a small bash script in `write_files` (run in order from `runcmd`), so each one is
a whole file that shellcheck can lint and a human can re-run over SSM to see what failed.

On the instance:
- swap (only when `swapMib` > 0): the seed's own commands — `fallocate`, `chmod 600`,
  `mkswap`, `swapon` — plus an /etc/fstab line and `vm.swappiness` in /etc/sysctl.d;
- the app under /opt/scalelab/app: an S3 object fetched with the instance role (boto3 from
  Ubuntu's `python3-boto3`: noble has no `awscli` deb, and the snap or AWS's zip installer would
  add a second package manager or ~60 MB to a 1 GiB box just to copy one file), or a git
  checkout of `app.gitUrl` at `app.gitRef`;
- a venv with Gunicorn and the app's requirements, then `app.setup` once (as the app user, with
  the same environment file as the service and SCALELAB_DATA_DIR=/var/lib/scalelab);
- systemd unit `scalelab-app.service` running Gunicorn with `Variant.gunicorn_args` (the one
  source of its flags), `Restart=always`, on port 80 (CAP_NET_BIND_SERVICE, no root, no nginx);
  its output goes to the journal (`journalctl -u scalelab-app`, what the AWS backend reads
  over SSM);
- the CloudWatch agent: `mem_used_percent`, `swap_used_percent` (and CPU) every 10 s in
  namespace `scalelab` with the single dimension InstanceId, plus /var/log/kern.log (OOM-killer
  lines) and Gunicorn's non-access lines from /var/log/syslog shipped to the stack's log group,
  so the evidence outlives a terminated instance.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml

from stacks.catalog import load_catalog
from stacks.variant import PROJECT_DIR, Variant, VariantError

APP_PORT = 80
"""Gunicorn listens here on every instance; the ALB's target group and the SGs use it too."""
METRICS_NAMESPACE = "scalelab"
METRICS_INTERVAL_S = 10
METRICS_FLUSH_S = 10
"""The agent's force_flush_interval (default 60 s): how long a sample may wait before upload."""
APP_DIR = "/opt/scalelab/app"
VENV_DIR = "/opt/scalelab/venv"
DATA_DIR = "/var/lib/scalelab"
ENV_FILE = "/etc/scalelab/app.env"
UNIT_NAME = "scalelab-app.service"
"""experiments/backends/aws/logs.py reads `journalctl -u scalelab-app`: keep the names in step."""
SETUP_MARKER = f"{DATA_DIR}/.setup-done"
BOOT_FAILED = f"{DATA_DIR}/boot-failed"
"""Written by the boot script when a step fails: which step, and its exit status."""
SCRIPT_DIR = "/usr/local/sbin"
CW_AGENT_CONFIG = "/opt/aws/amazon-cloudwatch-agent/etc/scalelab.json"
SHOP_PACKAGES = ("django", "gunicorn")
"""The shop's runtime needs; their version ranges are read from pyproject.toml (no second list)."""
ACCESS_LINE = r'" [0-9]{3} [0-9-]+'
"""Gunicorn's access-log shape (`"GET / HTTP/1.1" 200 1234`): kept out of CloudWatch Logs."""
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class AppFetch:
    """Where this stack put the app bundle (empty for `app.source: git`)."""

    bucket: str = ""
    key: str = ""


@dataclass(frozen=True)
class Script:
    """One step of the boot: a bash script written to disk, then run from runcmd."""

    name: str
    body: str

    @property
    def path(self) -> str:
        return f"{SCRIPT_DIR}/{self.name}"


def shop_requirements(pyproject: Path = PROJECT_DIR / "pyproject.toml") -> list[str]:
    """Version specs for the shop's runtime packages, taken from the project's dependencies."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    wanted = []
    for name in SHOP_PACKAGES:
        spec = next((d for d in deps if re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower()
                     == name), name)
        wanted.append(spec)
    return wanted


def arch_of(variant: Variant) -> str:
    """Debian's name for the instance's CPU architecture (amd64 or arm64)."""
    return "arm64" if load_catalog().instance(variant.instance_type).arch == "arm64" else "amd64"


def log_group_name(variant: Variant) -> str:
    """The CloudWatch log group the stack creates and the agent writes to."""
    return f"/scalelab/{variant.name}"


def _script(name: str, *lines: str) -> Script:
    return Script(name, "\n".join(["#!/bin/bash", "set -euo pipefail", *lines]) + "\n")


def swap_script(variant: Variant) -> Script | None:
    """The seed's swapfile (fallocate, chmod 600, mkswap, swapon), made to survive a reboot."""
    if variant.swap_mib <= 0:
        return None
    return _script(
        "scalelab-swap.sh",
        "# The seed's fix, as its author typed it (size from scalelab:swapMib).",
        "if ! swapon --show=NAME --noheadings | grep -qx /swapfile; then",
        f"  fallocate -l {variant.swap_mib}M /swapfile",
        "  chmod 600 /swapfile",
        "  mkswap /swapfile",
        "  swapon /swapfile",
        "fi",
        "grep -q '^/swapfile ' /etc/fstab || echo '/swapfile none swap sw 0 0' >> /etc/fstab",
        "sysctl -p /etc/sysctl.d/90-scalelab-swap.conf",
        "# Measuring micro-swap without its swap would be a silent lie: check what is on.",
        "size=$(swapon --show=NAME,SIZE --bytes --noheadings | awk '$1 == \"/swapfile\" "
        "{print $2}')",
        f"if [ \"${{size:-0}}\" -lt {(variant.swap_mib - 1) * 1024 * 1024} ]; then",
        f"  echo \"scalelab: /swapfile is not on with {variant.swap_mib} MiB "
        "(swapon shows ${size:-nothing})\" >&2",
        "  exit 1",
        "fi",
    )


def fetch_script(variant: Variant, fetch: AppFetch) -> Script:
    """Put the app into APP_DIR: the private S3 bundle (instance role) or a git checkout."""
    if variant.app.source == "git":
        url, ref = shlex.quote(variant.app.git_url), shlex.quote(variant.app.git_ref)
        return _script(
            "scalelab-fetch-app.sh",
            f"rm -rf {APP_DIR}",
            f"install -d -m 0755 {APP_DIR}",
            f"git -C {APP_DIR} init --quiet",
            f"git -C {APP_DIR} remote add origin {url}",
            "# fetch by ref so a branch, a tag or a commit id all work",
            f"git -C {APP_DIR} fetch --quiet --depth 1 origin {ref}",
            f"git -C {APP_DIR} checkout --quiet FETCH_HEAD",
        )
    if not fetch.bucket or not fetch.key:
        raise ValueError("an app bundle needs the bucket and key the stack uploaded it to")
    return _script(
        "scalelab-fetch-app.sh",
        f"region={shlex.quote(variant.region)}",
        f"bucket={shlex.quote(fetch.bucket)}",
        f"key={shlex.quote(fetch.key)}",
        "bundle=/opt/scalelab/bundle.zip",
        "install -d -m 0755 /opt/scalelab",
        "# The instance profile's credentials can lag the first boot by a few seconds: retry.",
        "for attempt in $(seq 1 30); do",
        "  if python3 -c 'import sys, boto3; boto3.client(\"s3\", region_name=sys.argv[1])"
        ".download_file(sys.argv[2], sys.argv[3], sys.argv[4])' \\",
        "      \"$region\" \"$bucket\" \"$key\" \"$bundle\"; then",
        "    break",
        "  fi",
        "  if [ \"$attempt\" -eq 30 ]; then",
        "    echo \"scalelab: cannot fetch s3://$bucket/$key with the instance role\" >&2",
        "    exit 1",
        "  fi",
        "  sleep 5",
        "done",
        f"rm -rf {APP_DIR}",
        f"python3 -m zipfile -e \"$bundle\" {APP_DIR}",
        "rm -f \"$bundle\"",
    )


def install_script(variant: Variant) -> Script:
    """venv + requirements, the app user and directories, `app.setup` once, then the service."""
    app = variant.app
    if app.requirements:
        pip_args = f"-r {shlex.quote(f'{APP_DIR}/{app.requirements}')} gunicorn"
    else:
        pip_args = " ".join(shlex.quote(s) for s in shop_requirements())
    lines = [
        "id -u scalelab >/dev/null 2>&1 || \\",
        f"  useradd --system --home-dir {DATA_DIR} --shell /usr/sbin/nologin scalelab",
        f"install -d -o scalelab -g scalelab -m 0750 {DATA_DIR}",
        f"python3 -m venv {VENV_DIR}",
        f"{VENV_DIR}/bin/pip install --quiet --no-cache-dir {pip_args}",
    ]
    if app.setup.strip():
        lines += [
            "# app.setup runs once per instance, as the app user, with the service's environment",
            f"if [ ! -e {SETUP_MARKER} ]; then",
            "  systemd-run --wait --pipe --collect --quiet --uid=scalelab --gid=scalelab \\",
            f"    --working-directory={APP_DIR} -p EnvironmentFile={ENV_FILE} \\",
            f"    /bin/sh -c {shlex.quote(app.setup)}",
            f"  touch {SETUP_MARKER}",
            "fi",
        ]
    lines += ["systemctl daemon-reload", f"systemctl enable --now {UNIT_NAME}"]
    return _script("scalelab-install-app.sh", *lines)


def cloudwatch_script(variant: Variant) -> Script:
    """Install AWS's CloudWatch agent .deb from the region's own bucket and start it."""
    region, arch = variant.region, arch_of(variant)
    url = (f"https://amazoncloudwatch-agent-{region}.s3.{region}.amazonaws.com/ubuntu/{arch}/"
           "latest/amazon-cloudwatch-agent.deb")
    return _script(
        "scalelab-cloudwatch-agent.sh",
        "deb=$(mktemp --suffix=.deb)",
        f"curl -fsSL --retry 5 -o \"$deb\" {shlex.quote(url)}",
        "dpkg -i -E \"$deb\"",
        "rm -f \"$deb\"",
        "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl \\",
        f"  -a fetch-config -m ec2 -s -c file:{CW_AGENT_CONFIG}",
    )


def cloudwatch_config(variant: Variant) -> dict:
    """Agent config: memory and swap percentages per InstanceId, and the logs diagnosis reads."""
    group = log_group_name(variant)
    return {
        "agent": {"metrics_collection_interval": METRICS_INTERVAL_S, "omit_hostname": True},
        "metrics": {
            "namespace": METRICS_NAMESPACE,
            "force_flush_interval": METRICS_FLUSH_S,
            "append_dimensions": {"InstanceId": "${aws:InstanceId}"},
            # Also one series per metric with InstanceId as its only dimension (the cpu plugin
            # adds `cpu: cpu-total`): the AWS backend asks for exactly these, no ListMetrics.
            "aggregation_dimensions": [["InstanceId"]],
            "metrics_collected": {
                "mem": {"measurement": ["mem_used_percent", "mem_available"]},
                "swap": {"measurement": ["swap_used_percent", "swap_used"]},
                "cpu": {"totalcpu": True,
                        "measurement": ["cpu_usage_idle", "cpu_usage_user", "cpu_usage_system",
                                        "cpu_usage_steal", "cpu_usage_iowait"]},
            },
        },
        "logs": {"force_flush_interval": 5, "logs_collected": {"files": {"collect_list": [
            {"file_path": "/var/log/kern.log", "log_group_name": group,
             "log_stream_name": "{instance_id}/kernel"},
            {"file_path": "/var/log/syslog", "log_group_name": group,
             "log_stream_name": "{instance_id}/gunicorn",
             "filters": [{"type": "include", "expression": r"gunicorn\["},
                         {"type": "exclude", "expression": ACCESS_LINE}]},
        ]}}},
    }


def _systemd_word(arg: str) -> str:
    """Quote one ExecStart argument for systemd (which also expands % and $)."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def env_file(variant: Variant) -> str:
    """The app's environment, shared by `app.setup` and the service (systemd EnvironmentFile)."""
    env = {"PATH": f"{VENV_DIR}/bin:/usr/local/bin:/usr/bin:/bin", "SCALELAB_DATA_DIR": DATA_DIR,
           "SCALELAB_VARIANT": variant.name, "PYTHONUNBUFFERED": "1", **dict(variant.app.env)}
    lines = []
    for key, value in env.items():
        if not _ENV_KEY.match(key) or "\n" in value or '"' in value or "\\" in value:
            raise VariantError(f"{variant.source_file or variant.name}: scalelab:app.env.{key} "
                               "must be a NAME=value pair without newlines, quotes or "
                               "backslashes.")
        lines.append(f'{key}="{value}"')
    return "\n".join(lines) + "\n"


def unit_gunicorn_args(variant: Variant) -> list[str]:
    """`Variant.gunicorn_args` without the access log: on the measured box every request would
    cost a journal write (nothing reads them: logs.py and the agent drop access lines)."""
    args = variant.gunicorn_args(f"0.0.0.0:{APP_PORT}")
    at = args.index("--access-logfile")
    return args[:at] + args[at + 2:]


def systemd_unit(variant: Variant) -> str:
    """Gunicorn as a service: the flags are exactly `Variant.gunicorn_args`, restart always."""
    args = unit_gunicorn_args(variant)
    exec_start = " ".join(_systemd_word(a) for a in [f"{VENV_DIR}/bin/gunicorn", *args])
    return "\n".join([
        "[Unit]",
        f"Description=scalelab app ({variant.app.wsgi}) under Gunicorn",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "User=scalelab",
        "Group=scalelab",
        f"WorkingDirectory={APP_DIR}",
        f"EnvironmentFile={ENV_FILE}",
        f"ExecStart={exec_start}",
        "Restart=always",
        "RestartSec=1",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=true",
        "KillMode=mixed",
        "# journald's default rate limit (10,000 lines / 30 s per unit) would drop exactly the",
        "# burst of WORKER TIMEOUT / SIGKILL lines the diagnosis needs.",
        "LogRateLimitIntervalSec=0",
        f"TimeoutStopSec={variant.gunicorn.timeout_s + 5}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def scripts(variant: Variant, fetch: AppFetch) -> list[Script]:
    """The boot steps in the order the boot script runs them."""
    steps = [swap_script(variant), cloudwatch_script(variant), fetch_script(variant, fetch),
             install_script(variant)]
    return [s for s in steps if s is not None]


def boot_script(steps: list[Script]) -> Script:
    """runcmd's one command. cloud-init joins runcmd entries into a script run *without*
    `set -e`, so a failed swap step would let the box boot on and be measured without swap.
    This runs the steps in order, stops at the first failure, says so loudly on the console
    (what `get_console_output` returns) and in BOOT_FAILED, and exits non-zero, which makes
    `cloud-init status` report an error."""
    lines = [
        f"rm -f {BOOT_FAILED}",
        "for step in " + " ".join(s.path for s in steps) + "; do",
        "  status=0",
        "  bash \"$step\" || status=$?",
        "  if [ \"$status\" -ne 0 ]; then",
        f"    install -d -m 0755 {DATA_DIR}",
        f"    echo \"$step exited $status\" > {BOOT_FAILED}",
        "    echo \"SCALELAB BOOT FAILED: $step exited $status; later steps were not run "
        "(see /var/log/cloud-init-output.log)\" >&2",
        "    exit 1",
        "  fi",
        "done",
        f"echo 'scalelab: boot finished ({len(steps)} steps)'",
    ]
    return _script("scalelab-boot.sh", *lines)


def cloud_config(variant: Variant, fetch: AppFetch = AppFetch()) -> dict:
    """The cloud-config document as a dict (tests look inside it)."""
    packages = ["python3-venv", "curl", "ca-certificates"]
    packages.append("git" if variant.app.source == "git" else "python3-boto3")
    files: list[dict] = []
    if variant.swap_mib > 0:
        files.append({"path": "/etc/sysctl.d/90-scalelab-swap.conf", "permissions": "0644",
                      "content": f"vm.swappiness = {variant.swappiness}\n"})
    files += [
        {"path": ENV_FILE, "permissions": "0644", "content": env_file(variant)},
        {"path": f"/etc/systemd/system/{UNIT_NAME}", "permissions": "0644",
         "content": systemd_unit(variant)},
        {"path": CW_AGENT_CONFIG, "permissions": "0644",
         "content": json.dumps(cloudwatch_config(variant), indent=2) + "\n"},
    ]
    steps = scripts(variant, fetch)
    boot = boot_script(steps)
    files += [{"path": s.path, "permissions": "0755", "content": s.body} for s in [*steps, boot]]
    return {
        "package_update": True,
        "packages": packages,
        "write_files": files,
        "runcmd": [["bash", boot.path]],
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so the user data reads like the files it writes."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_user_data(variant: Variant, fetch: AppFetch = AppFetch()) -> str:
    """The `#cloud-config` text for one instance of `variant` (plain text; pulumi-aws 7)."""
    body = yaml.dump(cloud_config(variant, fetch), Dumper=_Dumper, sort_keys=False, width=1000,
                     default_flow_style=False)
    return "#cloud-config\n" + body
