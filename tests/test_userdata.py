"""Rendered user data: valid for Debian's cloud-init, shell that shellcheck accepts, a systemd
unit systemd can parse, and the seed's swap steps exactly when swap is configured.

cloud-init, shellcheck and systemd-analyze are installed by `scripts/bootstrap.sh test`; a
missing tool fails these tests rather than skipping them.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from stacks.variant import PROJECT_DIR, AppSource, VariantError, load_variant, load_variants
from userdata.render import (
    APP_PORT,
    AppFetch,
    cloud_config,
    cloudwatch_config,
    render_user_data,
    shop_requirements,
    systemd_unit,
)

FETCH = AppFetch("scalelab-bundle-bucket-1a2b3c4", "bundles/v/0123456789abcdef.zip")


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run scripts/bootstrap.sh test"
    return path


def variants_to_check() -> list:
    """The four stack files plus the other shapes the renderer supports."""
    micro_swap = load_variant("micro-swap")
    git = replace(micro_swap, name="git-app", app=AppSource(
        source="git", git_url="https://example.org/me/app.git", git_ref="main",
        wsgi="app:application", requirements="requirements.txt", setup="",
        env={"DJANGO_DEBUG": "0", "GREETING": "hello world"}))
    arm = load_variant("scale-up").with_overrides(name="arm", instance_type="t4g.small")
    return [*load_variants(), git, arm]


CASES = variants_to_check()


@pytest.mark.parametrize("variant", CASES, ids=[v.name for v in CASES])
def test_cloud_init_schema_accepts_it(tmp_path: Path, variant) -> None:
    path = tmp_path / "user-data"
    path.write_text(render_user_data(variant, FETCH))
    result = subprocess.run([tool("cloud-init"), "schema", "--config-file", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_cloud_init_schema_check_can_fail(tmp_path: Path) -> None:
    """Guard: the check above really validates (a wrong type is rejected)."""
    doc = cloud_config(load_variant("micro"), FETCH)
    doc["packages"] = 5
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\n" + yaml.safe_dump(doc))
    result = subprocess.run([tool("cloud-init"), "schema", "--config-file", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


@pytest.mark.parametrize("variant", CASES, ids=[v.name for v in CASES])
def test_every_script_passes_shellcheck(tmp_path: Path, variant) -> None:
    doc = cloud_config(variant, FETCH)
    scripts = [f for f in doc["write_files"] if f["content"].startswith("#!/bin/bash")]
    assert len(scripts) == (5 if variant.swap_mib else 4)  # the steps and the boot script
    paths = []
    for f in scripts:
        path = tmp_path / Path(f["path"]).name
        path.write_text(f["content"])
        paths.append(str(path))
    # runcmd itself, as the shell script cloud-init turns it into
    runcmd = tmp_path / "runcmd.sh"
    runcmd.write_text("#!/bin/sh\n" + "".join(shlex.join(c) + "\n" for c in doc["runcmd"]))
    result = subprocess.run([tool("shellcheck"), "--severity=style", *paths, str(runcmd)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    # runcmd runs the boot script, and it runs exactly the other scripts written, in order
    assert doc["runcmd"] == [["bash", "/usr/local/sbin/scalelab-boot.sh"]]
    boot = scripts[-1]["content"]
    listed = re.search(r"^for step in (.*); do$", boot, re.M)
    assert listed and listed.group(1).split() == [f["path"] for f in scripts[:-1]]


def test_swap_is_the_seeds_commands_only_when_configured() -> None:
    micro, swap = load_variant("micro"), load_variant("micro-swap")
    plain = render_user_data(micro, FETCH)
    assert not any(word in plain for word in ("/swapfile", "mkswap", "swapon", "swappiness",
                                              "fallocate", "swap.sh"))
    doc = cloud_config(swap, FETCH)
    script = next(f["content"] for f in doc["write_files"] if f["path"].endswith("swap.sh"))
    steps = [line.strip() for line in script.splitlines()
             if re.match(r"\s*(fallocate|chmod|mkswap|swapon) ", line)]
    assert steps == ["fallocate -l 2048M /swapfile", "chmod 600 /swapfile", "mkswap /swapfile",
                     "swapon /swapfile"]
    assert "/swapfile none swap sw 0 0" in script
    sysctl = next(f for f in doc["write_files"] if f["path"].startswith("/etc/sysctl.d/"))
    assert sysctl["content"] == "vm.swappiness = 60\n"
    boot = next(f["content"] for f in doc["write_files"] if f["path"].endswith("boot.sh"))
    assert "for step in /usr/local/sbin/scalelab-swap.sh " in boot  # swap first


@pytest.mark.parametrize("variant", CASES, ids=[v.name for v in CASES])
def test_systemd_parses_the_unit(tmp_path: Path, variant) -> None:
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    gunicorn = tmp_path / "opt/scalelab/venv/bin/gunicorn"
    gunicorn.parent.mkdir(parents=True)
    gunicorn.write_text("#!/bin/sh\n")
    gunicorn.chmod(0o755)
    (tmp_path / "opt/scalelab/app").mkdir()
    unit = unit_dir / "scalelab-app.service"
    unit.write_text(systemd_unit(variant))
    result = subprocess.run([tool("systemd-analyze"), "verify", "--man=no", f"--root={tmp_path}",
                             str(unit)], capture_output=True, text=True, timeout=60)
    # Without a booted system, systemd complains about missing targets; parse errors name the
    # file and line, and those must not appear.
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if str(unit) in line or "Unknown" in line or "Failed to parse" in line]
    assert problems == []
    text = unit.read_text()
    assert "Restart=always" in text and "User=scalelab" in text
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in text
    assert "LogRateLimitIntervalSec=0" in text.splitlines()  # journald keeps every line


@pytest.mark.parametrize("name", ["micro", "scale-up"])
def test_gunicorn_accepts_the_units_flags(name: str) -> None:
    """The exact ExecStart flags, checked by the Gunicorn we ship (`--check-config` loads the
    shop's WSGI app without serving)."""
    variant = load_variant(name)
    line = next(x for x in systemd_unit(variant).splitlines() if x.startswith("ExecStart="))
    args = shlex.split(line.removeprefix("ExecStart="))[1:]
    full = variant.gunicorn_args(f"0.0.0.0:{APP_PORT}")
    at = full.index("--access-logfile")
    assert args == full[:at] + full[at + 2:]  # no access log on the measured box
    args[args.index("--bind") + 1] = "127.0.0.1:0"
    result = subprocess.run([sys.executable, "-m", "gunicorn", "--check-config", *args],
                            cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_app_delivery_and_environment() -> None:
    variant = load_variant("micro")
    doc = cloud_config(variant, FETCH)
    fetch = next(f["content"] for f in doc["write_files"] if f["path"].endswith("fetch-app.sh"))
    assert f"bucket={FETCH.bucket}" in fetch and f"key={FETCH.key}" in fetch
    assert "python3-boto3" in doc["packages"] and "git" not in doc["packages"]
    install = next(f["content"] for f in doc["write_files"]
                   if f["path"].endswith("install-app.sh"))
    for spec in shop_requirements():
        assert shlex.quote(spec) in install
    assert "/bin/sh -c 'python -m shop seed'" in install
    env = next(f["content"] for f in doc["write_files"] if f["path"] == "/etc/scalelab/app.env")
    assert 'SCALELAB_DATA_DIR="/var/lib/scalelab"' in env
    git = next(v for v in CASES if v.name == "git-app")
    gdoc = cloud_config(git, FETCH)
    text = render_user_data(git, FETCH)
    assert "git" in gdoc["packages"] and "boto3" not in text and FETCH.bucket not in text
    assert "-r /opt/scalelab/app/requirements.txt gunicorn" in text
    assert "systemd-run" not in text  # no setup command configured
    assert 'GREETING="hello world"' in text
    with pytest.raises(ValueError):
        cloud_config(variant)  # a bundle variant without the bucket it was uploaded to


def test_bad_env_value_is_one_sentence() -> None:
    variant = replace(load_variant("micro"), app=AppSource(env={"X": 'say "hi"'}))
    with pytest.raises(VariantError, match=r"scalelab:app\.env\.X must be"):
        render_user_data(variant, FETCH)


def test_cloudwatch_agent_publishes_memory_and_swap_per_instance() -> None:
    variant = load_variant("scale-out")
    config = cloudwatch_config(variant)
    assert config["metrics"]["namespace"] == "scalelab"
    assert config["metrics"]["append_dimensions"] == {"InstanceId": "${aws:InstanceId}"}
    assert config["agent"]["omit_hostname"] is True  # InstanceId is the only dimension
    collected = config["metrics"]["metrics_collected"]
    assert "mem_used_percent" in collected["mem"]["measurement"]
    assert "swap_used_percent" in collected["swap"]["measurement"]
    files = config["logs"]["logs_collected"]["files"]["collect_list"]
    assert {f["log_group_name"] for f in files} == {"/scalelab/scale-out"}
    doc = cloud_config(variant, FETCH)
    written = next(f for f in doc["write_files"] if f["path"].endswith("scalelab.json"))
    assert json.loads(written["content"]) == config
    arm = next(v for v in CASES if v.name == "arm")
    assert "/ubuntu/arm64/latest/" in render_user_data(arm, FETCH)
