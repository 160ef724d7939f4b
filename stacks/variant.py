"""A Variant: one stack's settings, parsed once from `stacks/Pulumi.<variant>.yaml`.

The Pulumi program, the local backend and the cost model all build their picture of a stack
from this one object, so what is deployed, emulated and priced cannot drift apart.
No pulumi import here: the experiment runner uses it too.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from stacks.catalog import CreditMode, load_catalog
from stacks.errors import UserError

PROJECT = "scalelab"
STACKS_DIR = Path(__file__).resolve().parent
PROJECT_DIR = STACKS_DIR.parent
DEFAULT_REGION = "us-east-1"
OS_RESERVE_MIB = 350
"""Memory the OS and its services keep on a real instance (the seed's t2.micro: 949 MiB total,
~418 MiB used before the app got busy). The local backend's cgroup gets memory − this."""

MAX_NAME_LENGTH = 17
"""Pulumi autonames the ALB `<variant>-lb-alb-<7 random>`, and AWS allows 32 characters for an
ALB or target group name: 17 + len("-lb-alb") + 8 = 32. Bucket (63) and IAM role (64) names are
longer than that, so they fit too."""
_NAME = re.compile(r"^[a-z](?:[a-z0-9]|-(?!-))*(?<!-)$")
RESERVED_PREFIXES = ("internal", "sthree-", "xn--")
"""An ALB name may not begin with "internal-", an S3 bucket name not with "sthree-" or "xn--"."""


def variant_name_problem(name: str) -> str:
    """What is wrong with a variant (= stack) name for the AWS names derived from it, or ""."""
    if not _NAME.match(name):
        return ("must be lowercase letters, digits and single hyphens, starting with a letter and "
                "not ending with a hyphen (it becomes part of S3 bucket and load balancer names)")
    if len(name) > MAX_NAME_LENGTH:
        return (f"is {len(name)} characters long; at most {MAX_NAME_LENGTH} keep the load "
                "balancer and target group names Pulumi derives from it within AWS's 32")
    if name.startswith(RESERVED_PREFIXES):
        reserved = " or ".join(repr(p) for p in RESERVED_PREFIXES)
        return f"may not begin with {reserved} (AWS reserves them)"
    return ""


WorkerClass = Literal["sync", "gthread"]
LbAlgorithm = Literal["round_robin", "least_outstanding_requests"]


class VariantError(UserError):
    """A stack config value is invalid; the message names the file, the key and what is valid."""


@dataclass(frozen=True)
class GunicornSettings:
    workers: int = 2
    threads: int = 1
    worker_class: WorkerClass = "sync"
    timeout_s: int = 30
    max_requests: int = 0
    max_requests_jitter: int = 0


@dataclass(frozen=True)
class HealthCheck:
    """The ALB target group's health check (HAProxy's `check` locally)."""

    path: str = "/healthz"
    interval_s: int = 5
    timeout_s: int = 4
    healthy_threshold: int = 2
    unhealthy_threshold: int = 2


@dataclass(frozen=True)
class AppSource:
    """What runs on the instances: the shop by default, or a user's own WSGI app."""

    source: Literal["bundle", "git"] = "bundle"
    path: str = "."
    """Directory holding the app (relative to the project) for `bundle`."""
    git_url: str = ""
    git_ref: str = "main"
    wsgi: str = "shop.wsgi:application"
    health_path: str = "/healthz"
    requirements: str = ""
    """Optional pip requirements file inside the app directory."""
    setup: str = "python -m shop seed"
    """Shell command run once per deployment in the app directory before Gunicorn starts,
    with SCALELAB_DATA_DIR pointing at the data directory each instance then gets a copy of."""
    locustfile: str = "shop/locustfile.py"
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return (PROJECT_DIR / self.path).resolve()


@dataclass(frozen=True)
class Network:
    vpc: Literal["default", "new"] = "default"
    cidr: str = "10.42.0.0/16"
    availability_zones: int = 2


@dataclass(frozen=True)
class Variant:
    name: str
    instance_type: str = "t2.micro"
    count: int = 1
    swap_mib: int = 0
    swappiness: int = 60
    credit_mode: CreditMode = "standard"
    ami: str = ""
    """Empty: the newest Ubuntu 24.04 from Canonical (owner 099720109477), like the seed."""
    root_volume_gib: int = 8
    region: str = DEFAULT_REGION
    allowed_cidr: str = "0.0.0.0/0"
    load_balancer: bool = False
    lb_algorithm: LbAlgorithm = "round_robin"
    health_check: HealthCheck = HealthCheck()
    network: Network = Network()
    gunicorn: GunicornSettings = GunicornSettings()
    app: AppSource = AppSource()
    run_id: str = "manual"
    os_reserve_mib: int = OS_RESERVE_MIB
    source_file: str = ""

    # ---- derived facts every consumer needs -------------------------------------------
    @property
    def memory_mib(self) -> int:
        return load_catalog().instance(self.instance_type).memory_mib

    @property
    def app_memory_mib(self) -> int:
        """What the app gets of one instance: its memory less what the OS keeps (the local
        backend's cgroup limit; on EC2 the kernel, sshd and agents hold the reserve)."""
        return self.memory_mib - self.os_reserve_mib

    @property
    def vcpu(self) -> int:
        return load_catalog().instance(self.instance_type).vcpu

    @property
    def total_vcpu(self) -> int:
        return self.vcpu * self.count

    @property
    def tags(self) -> dict[str, str]:
        """Tags on every resource, so a sweeper can find what a run left behind."""
        return {"project": PROJECT, "variant": self.name, "stack": self.name, "run-id": self.run_id}

    def gunicorn_args(self, bind: str) -> list[str]:
        """Gunicorn's flags; the systemd unit and the local supervisor both use these."""
        g = self.gunicorn
        args = [
            "--bind", bind,
            "--workers", str(g.workers),
            "--threads", str(g.threads),
            "--worker-class", g.worker_class,
            "--timeout", str(g.timeout_s),
            "--worker-tmp-dir", "/dev/shm",
            "--access-logfile", "-",
            "--error-logfile", "-",
            "--log-level", "info",
        ]
        if g.max_requests:
            args += ["--max-requests", str(g.max_requests),
                     "--max-requests-jitter", str(g.max_requests_jitter)]
        return [*args, self.app.wsgi]

    def with_overrides(self, **changes: Any) -> Variant:
        changed = replace(self, **changes)
        changed.validate()
        return changed

    # ---- validation -------------------------------------------------------------------
    def validate(self) -> None:
        where = self.source_file or f"variant {self.name}"

        def fail(key: str, why: str) -> VariantError:
            return VariantError(f"{where}: {PROJECT}:{key} {why}.")

        name_problem = variant_name_problem(self.name)
        if name_problem:
            raise VariantError(f"{where}: the variant name {self.name!r} {name_problem}; rename "
                               "the stack file (stacks/Pulumi.<variant>.yaml).")

        catalog = load_catalog()
        if self.instance_type not in catalog.instance_types:
            known = ", ".join(catalog.instance_types)
            raise fail("instanceType", f"is {self.instance_type!r}, which is not a known instance "
                                       f"type; valid: {known}")
        it = catalog.instance(self.instance_type)
        if self.count < 1:
            raise fail("count", f"must be a whole number of at least 1, got {self.count}")
        if self.count > 1 and not self.load_balancer:
            raise fail("count", f"is {self.count} but loadBalancer is false; several instances "
                                "need scalelab:loadBalancer: true (or use count 1)")
        if self.swap_mib < 0:
            raise fail("swapMib", f"must be 0 (no swap) or a positive size in MiB, got "
                                  f"{self.swap_mib}")
        if self.swap_mib > (self.root_volume_gib - 2) * 1024:
            raise fail("swapMib", f"is {self.swap_mib} MiB, larger than the {self.root_volume_gib} "
                                  "GiB root volume can hold next to the OS (2 GiB); lower it or "
                                  "raise scalelab:rootVolumeGib")
        if not 0 <= self.swappiness <= 100:
            raise fail("swappiness", f"must be between 0 and 100, got {self.swappiness}")
        if self.credit_mode not in ("standard", "unlimited"):
            raise fail("creditMode", f"must be 'standard' or 'unlimited', got {self.credit_mode!r}")
        if self.credit_mode and not it.burstable and self.credit_mode == "unlimited":
            raise fail("creditMode", f"is 'unlimited' but {self.instance_type} is not a burstable "
                                     "(T-family) type; leave it unset")
        if self.root_volume_gib < 8:
            raise fail("rootVolumeGib", f"must be at least 8 (Ubuntu's image), got "
                                        f"{self.root_volume_gib}")
        if self.load_balancer and self.network.availability_zones < 2:
            raise fail("network.availabilityZones", "must be at least 2 with a load balancer "
                       f"(an ALB needs subnets in two zones), got "
                       f"{self.network.availability_zones}")
        if self.network.vpc not in ("default", "new"):
            raise fail("network.vpc", f"must be 'default' or 'new', got {self.network.vpc!r}")
        if self.lb_algorithm not in ("round_robin", "least_outstanding_requests"):
            raise fail("lbAlgorithm", "must be 'round_robin' or 'least_outstanding_requests', "
                                      f"got {self.lb_algorithm!r}")
        try:
            ipaddress.ip_network(self.allowed_cidr)
        except ValueError:
            raise fail("allowedCidr", f"must be a CIDR block such as 0.0.0.0/0, got "
                                      f"{self.allowed_cidr!r}") from None
        g = self.gunicorn
        if g.workers < 1 or g.threads < 1 or g.timeout_s < 1:
            raise fail("gunicorn", "workers, threads and timeout must each be at least 1, got "
                                   f"{g.workers}, {g.threads}, {g.timeout_s}")
        if g.worker_class not in ("sync", "gthread"):
            raise fail("gunicorn.workerClass", f"must be 'sync' or 'gthread', got "
                                               f"{g.worker_class!r}")
        if ":" not in self.app.wsgi:
            raise fail("app.wsgi", f"must look like 'module:callable', got {self.app.wsgi!r}")
        if self.app.source == "git" and not self.app.git_url:
            raise fail("app.gitUrl", "is required when app.source is 'git'")
        if self.app.source not in ("bundle", "git"):
            raise fail("app.source", f"must be 'bundle' or 'git', got {self.app.source!r}")
        if not self.health_check.path.startswith("/"):
            raise fail("healthCheck.path", f"must start with '/', got {self.health_check.path!r}")
        if self.os_reserve_mib < 0 or self.os_reserve_mib >= it.memory_mib:
            raise fail("local.osReserveMib", f"must be between 0 and {it.memory_mib - 1} for "
                                             f"{self.instance_type}, got {self.os_reserve_mib}")


# ---- parsing ----------------------------------------------------------------------------

_FIELDS: dict[str, tuple[str, type]] = {
    "instanceType": ("instance_type", str),
    "count": ("count", int),
    "swapMib": ("swap_mib", int),
    "swappiness": ("swappiness", int),
    "creditMode": ("credit_mode", str),
    "ami": ("ami", str),
    "rootVolumeGib": ("root_volume_gib", int),
    "allowedCidr": ("allowed_cidr", str),
    "loadBalancer": ("load_balancer", bool),
    "lbAlgorithm": ("lb_algorithm", str),
    "runId": ("run_id", str),
}
_NESTED: dict[str, tuple[str, type, dict[str, tuple[str, type]]]] = {
    "gunicorn": ("gunicorn", GunicornSettings, {
        "workers": ("workers", int), "threads": ("threads", int),
        "workerClass": ("worker_class", str), "timeout": ("timeout_s", int),
        "maxRequests": ("max_requests", int), "maxRequestsJitter": ("max_requests_jitter", int),
    }),
    "healthCheck": ("health_check", HealthCheck, {
        "path": ("path", str), "intervalS": ("interval_s", int), "timeoutS": ("timeout_s", int),
        "healthyThreshold": ("healthy_threshold", int),
        "unhealthyThreshold": ("unhealthy_threshold", int),
    }),
    "network": ("network", Network, {
        "vpc": ("vpc", str), "cidr": ("cidr", str),
        "availabilityZones": ("availability_zones", int),
    }),
    "app": ("app", AppSource, {
        "source": ("source", str), "path": ("path", str), "gitUrl": ("git_url", str),
        "gitRef": ("git_ref", str), "wsgi": ("wsgi", str), "healthPath": ("health_path", str),
        "requirements": ("requirements", str), "setup": ("setup", str),
        "locustfile": ("locustfile", str), "env": ("env", dict),
    }),
}
CONFIG_KEYS: tuple[str, ...] = (*_FIELDS, *_NESTED, "local")
"""Every `scalelab:` key a stack file may set (the Pulumi program reads exactly these)."""


def _coerce(value: Any, kind: type, where: str, key: str) -> Any:
    """Pulumi hands config to programs as strings; YAML files give native types. Accept both."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false"):
                return str(value).lower() == "true"
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).strip()) if not isinstance(value, float) else int(value)
        if kind is dict:
            if not isinstance(value, Mapping):
                raise ValueError
            return {str(k): str(v) for k, v in value.items()}
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except ValueError:
        expected = {bool: "true or false", int: "a whole number", dict: "a mapping",
                    str: "a string"}[kind]
        raise VariantError(f"{where}: {PROJECT}:{key} must be {expected}, got {value!r}.") from None


def variant_from_settings(name: str, settings: Mapping[str, Any], region: str | None = None,
                          source_file: str = "") -> Variant:
    """Build and validate a Variant from un-prefixed `scalelab:` settings (`instanceType`, ...)."""
    where = source_file or f"variant {name}"
    unknown = sorted(set(settings) - set(CONFIG_KEYS))
    if unknown:
        raise VariantError(f"{where}: {PROJECT}:{unknown[0]} is not a known setting; valid: "
                           f"{', '.join(CONFIG_KEYS)}.")
    values: dict[str, Any] = {"name": name, "source_file": source_file,
                              "region": region or DEFAULT_REGION}
    for key, (attr, kind) in _FIELDS.items():
        if settings.get(key) is not None:
            values[attr] = _coerce(settings[key], kind, where, key)
    for key, (attr, cls, fields) in _NESTED.items():
        raw = settings.get(key)
        if raw is None:
            continue
        if not isinstance(raw, Mapping):
            raise VariantError(f"{where}: {PROJECT}:{key} must be a mapping of "
                               f"{', '.join(fields)}, got {raw!r}.")
        sub = {}
        for sub_key, sub_value in raw.items():
            if sub_key not in fields:
                raise VariantError(f"{where}: {PROJECT}:{key}.{sub_key} is not a known setting; "
                                   f"valid: {', '.join(fields)}.")
            sub_attr, sub_kind = fields[sub_key]
            sub[sub_attr] = _coerce(sub_value, sub_kind, where, f"{key}.{sub_key}")
        values[attr] = cls(**sub)
    local = settings.get("local") or {}
    if "osReserveMib" in local:
        values["os_reserve_mib"] = _coerce(local["osReserveMib"], int, where, "local.osReserveMib")
    if "credit_mode" not in values and values.get("instance_type", "t2.micro") in \
            load_catalog().instance_types:
        it = load_catalog().instance(values.get("instance_type", "t2.micro"))
        values["credit_mode"] = it.default_credit_mode or "standard"
    if "health_check" not in values and "app" in values:
        values["health_check"] = HealthCheck(path=values["app"].health_path)
    variant = Variant(**values)
    variant.validate()
    return variant


def stack_config(variant: Variant) -> dict[str, str]:
    """The Variant as the Pulumi CLI would hand it to the program: strings, objects as JSON."""
    defaults = Variant(name=variant.name)
    config: dict[str, str] = {"aws:region": variant.region}
    for key, (attr, _kind) in _FIELDS.items():
        value = getattr(variant, attr)
        if value != getattr(defaults, attr) or key in ("instanceType", "count", "swapMib"):
            config[f"{PROJECT}:{key}"] = value if isinstance(value, str) else json.dumps(value)
    for key, (attr, _cls, fields) in _NESTED.items():
        obj = getattr(variant, attr)
        sub = {k: (dict(getattr(obj, a)) if kind is dict else getattr(obj, a))
               for k, (a, kind) in fields.items()}
        config[f"{PROJECT}:{key}"] = json.dumps(sub)
    config[f"{PROJECT}:local"] = json.dumps({"osReserveMib": variant.os_reserve_mib})
    return config


def stack_file(name: str, stacks_dir: Path = STACKS_DIR) -> Path:
    return stacks_dir / f"Pulumi.{name}.yaml"


def available_variants(stacks_dir: Path = STACKS_DIR) -> list[str]:
    """Variant names in the order the story tells them (micro, micro-swap, scale-up, scale-out)."""
    order = ["micro", "micro-swap", "scale-up", "scale-out"]
    names = [p.name[len("Pulumi."):-len(".yaml")] for p in stacks_dir.glob("Pulumi.*.yaml")]
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def load_variant(name_or_path: str | Path, stacks_dir: Path = STACKS_DIR) -> Variant:
    """Parse `stacks/Pulumi.<name>.yaml` (or a path to such a file) into a Variant."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = stack_file(str(name_or_path), stacks_dir)
        if not path.exists():
            known = ", ".join(available_variants(stacks_dir)) or "none"
            raise VariantError(f"unknown variant {str(name_or_path)!r}; valid: {known} "
                               f"(one per {stacks_dir}/Pulumi.<variant>.yaml).")
    name = path.name.removeprefix("Pulumi.").rsplit(".", 1)[0]
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise VariantError(f"{path}: cannot be read as a Pulumi stack file ({exc}).") from None
    config = doc.get("config") or {}
    if not isinstance(config, Mapping):
        raise VariantError(f"{path}: 'config' must be a mapping of '{PROJECT}:<key>: value'.")
    settings = {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith(f"{PROJECT}:")}
    region = config.get("aws:region")
    return variant_from_settings(name, settings, region=region, source_file=str(path))


def load_variants(names: list[str] | None = None, stacks_dir: Path = STACKS_DIR) -> list[Variant]:
    return [load_variant(n, stacks_dir) for n in (names or available_variants(stacks_dir))]
