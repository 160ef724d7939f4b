"""Gunicorn and kernel log lines from the instances via SSM Run Command (no SSH, no open port).

One `AWS-RunShellScript` per deployment prints two marked sections per instance: kernel OOM
lines first (few, decisive) and then Gunicorn's error log without access lines, because SSM
returns at most 24,000 characters of output. `journalctl -o short-unix` gives each line its
own Unix time, so the diagnosis can line a SIGKILL up with the memory samples.
"""

from __future__ import annotations

import re
import time
from typing import Any

from experiments.model import LogLine

APP_UNIT = "scalelab-app"
KERNEL_MARK = "--- scalelab:kernel ---"
APP_MARK = "--- scalelab:gunicorn ---"
OOM_PATTERN = "killed process|out of memory|oom-kill|invoked oom-killer"
ACCESS_LINE = r'" [0-9]{3} [0-9-]+'  # `"GET / HTTP/1.1" 200 1234` — Gunicorn's access log
TERMINAL = {"Success", "Cancelled", "TimedOut", "Failed", "Cancelling", "Undeliverable",
            "Terminated", "InvalidPlatform", "AccessDenied", "DeliveryTimedOut",
            "ExecutionTimedOut"}
_SHORT_UNIX = re.compile(r"^(\d+(?:\.\d+)?)\s+\S+\s+([^:]+):\s?(.*)$")
_SYSLOG_PREFIX = re.compile(
    r"^(?:\w{3}\s+\d+\s+\d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+)\s+\S+\s+[^:\s]+:\s?(.*)$")
STREAMS = {"kernel": "{instance}/kernel", "gunicorn": "{instance}/gunicorn"}
"""The CloudWatch agent's streams in the stack's log group (userdata/render.py ships them)."""


def shell_script(since: float, app_lines: int = 150, kernel_lines: int = 40) -> list[str]:
    """The commands sent to every instance (kept POSIX sh: SSM runs them with /bin/sh)."""
    since_arg = f"@{int(since)}"
    return [
        f"echo '{KERNEL_MARK}'",
        "if command -v journalctl >/dev/null 2>&1; then "
        f"journalctl -k --since {since_arg} -o short-unix --no-pager 2>/dev/null"
        f" | grep -iE '{OOM_PATTERN}' | tail -n {kernel_lines}; "
        f"else dmesg 2>/dev/null | grep -iE '{OOM_PATTERN}' | tail -n {kernel_lines}; fi; true",
        f"echo '{APP_MARK}'",
        f"journalctl -u {APP_UNIT} --since {since_arg} -o short-unix --no-pager 2>/dev/null"
        f" | grep -vE '{ACCESS_LINE}' | tail -n {app_lines}; true",
    ]


def parse_output(instance: str, text: str, now: float) -> list[LogLine]:
    """Split the two sections into LogLines; lines without a journal time get `now`."""
    lines: list[LogLine] = []
    source = ""
    for raw in text.splitlines():
        if raw.strip() == KERNEL_MARK:
            source = f"kernel:{instance}"
            continue
        if raw.strip() == APP_MARK:
            source = f"gunicorn:{instance}"
            continue
        if not source or not raw.strip():
            continue
        match = _SHORT_UNIX.match(raw)
        if match:
            lines.append(LogLine(t=float(match.group(1)), source=source, text=match.group(3)))
        else:
            lines.append(LogLine(t=now, source=source, text=raw.strip()))
    return lines


def collect_logs(ssm: Any, instance_ids: list[str], since: float, timeout_s: float = 90.0,
                 poll_s: float = 2.0) -> list[LogLine]:
    """Run the script on every instance and gather its lines; failures become note lines."""
    if not instance_ids:
        return []
    now = time.time()
    try:
        command = ssm.send_command(
            InstanceIds=instance_ids, DocumentName="AWS-RunShellScript",
            Comment="scalelab: collect gunicorn and kernel OOM lines",
            Parameters={"commands": shell_script(since), "executionTimeout": ["60"]},
            TimeoutSeconds=max(30, int(timeout_s)))["Command"]
    except Exception as exc:
        return [note(now, f"SSM send_command failed, no instance logs collected: {exc}")]
    lines: list[LogLine] = []
    deadline = time.monotonic() + timeout_s
    for instance in instance_ids:
        lines.extend(_invocation_lines(ssm, command["CommandId"], instance, deadline, poll_s, now))
    return lines


def _invocation_lines(ssm: Any, command_id: str, instance: str, deadline: float, poll_s: float,
                      now: float) -> list[LogLine]:
    while True:
        try:
            result = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code != "InvocationDoesNotExist" or time.monotonic() > deadline:
                return [note(now, f"SSM get_command_invocation on {instance} failed: {exc}")]
            time.sleep(poll_s)
            continue
        status = result.get("Status", "")
        if status in TERMINAL:
            out = parse_output(instance, result.get("StandardOutputContent", ""), now)
            if status != "Success":
                out.append(note(now, f"SSM log command on {instance} ended {status}: "
                                     f"{result.get('StandardErrorContent', '').strip()[:200]}"))
            return out
        if time.monotonic() > deadline:
            return [note(now, f"SSM log command on {instance} still {status} at the deadline; "
                              "its logs are missing")]
        time.sleep(poll_s)


def note(t: float, text: str) -> LogLine:
    """A line about collection itself, so a missing log is visible in the results."""
    return LogLine(t=t, source="backend:aws", text=text)


def collect_log_group(logs: Any, group: str, instance: str, since: float,
                      limit: int = 500) -> list[LogLine]:
    """The same lines from the stack's CloudWatch Logs group: the fallback when SSM cannot reach
    an instance (agent not registered yet, instance gone) — the agent shipped them already."""
    lines: list[LogLine] = []
    for kind, pattern in STREAMS.items():
        stream = pattern.format(instance=instance)
        kwargs: dict[str, Any] = {"logGroupName": group, "logStreamNames": [stream],
                                  "startTime": int(since * 1000)}
        events: list[dict[str, Any]] = []
        while len(events) < limit:
            page = logs.filter_log_events(**kwargs)
            events.extend(page.get("events", []))
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        for event in events[-limit:]:
            text = event.get("message", "").rstrip()
            match = _SYSLOG_PREFIX.match(text)
            lines.append(LogLine(t=event["timestamp"] / 1000, source=f"{kind}:{instance}",
                                 text=match.group(1) if match else text))
    return lines


def run_script(ssm: Any, instance_ids: list[str], commands: list[str], comment: str,
               timeout_s: float = 90.0, poll_s: float = 2.0) -> dict[str, dict[str, str]]:
    """Run shell commands on every instance; instance -> {status, stdout, stderr}. A command
    that could not be sent or did not finish shows up as a status, never as an exception."""
    if not instance_ids:
        return {}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            command = ssm.send_command(
                InstanceIds=instance_ids, DocumentName="AWS-RunShellScript", Comment=comment,
                Parameters={"commands": commands, "executionTimeout": ["60"]},
                TimeoutSeconds=max(30, int(timeout_s)))["Command"]
            break
        except Exception as exc:
            # A fresh instance's SSM agent registers a little after boot: InvalidInstanceId
            # until then. Anything else, or the deadline, is final.
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code != "InvalidInstanceId" or time.monotonic() + poll_s > deadline:
                return {i: {"status": "NotSent", "stdout": "", "stderr": str(exc)}
                        for i in instance_ids}
            time.sleep(poll_s)
    results: dict[str, dict[str, str]] = {}
    for instance in instance_ids:
        while True:
            try:
                got = ssm.get_command_invocation(CommandId=command["CommandId"],
                                                 InstanceId=instance)
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
                if code != "InvocationDoesNotExist" or time.monotonic() > deadline:
                    results[instance] = {"status": "Unknown", "stdout": "", "stderr": str(exc)}
                    break
                time.sleep(poll_s)
                continue
            status = got.get("Status", "")
            if status in TERMINAL or time.monotonic() > deadline:
                results[instance] = {"status": status,
                                     "stdout": got.get("StandardOutputContent", ""),
                                     "stderr": got.get("StandardErrorContent", "")}
                break
            time.sleep(poll_s)
    return results
