"""The Pulumi Automation API layer: open the variant's stack, write its run config, up, destroy.

`pulumi.automation` is imported inside functions so that importing the backend (e.g. for
`--help` or the local backend) stays cheap and works without the Pulumi SDK's gRPC stack.

Run-specific config (the run id and any overrides of the stack file) goes into a *copy* of the
stack file under the state directory, passed to `up` / `destroy` as `--config-file`. The
user's `stacks/Pulumi.<variant>.yaml` is therefore never edited by a run (only `pulumi stack
init` may add its `encryptionsalt`, which the copy carries along).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from experiments.errors import UserError
from stacks.variant import _FIELDS, _NESTED, PROJECT, Variant, load_variant

INSTALL_HINT = "install the Pulumi CLI (https://www.pulumi.com/docs/install/)"
LEFTOVERS_HINT = "run `python -m experiments leftovers --backend aws --delete`"


def pulumi_env(state_dir: Path) -> dict[str, str]:
    """A local file state backend unless the user chose one; the passphrase must be set."""
    env: dict[str, str] = {}
    if not os.environ.get("PULUMI_BACKEND_URL"):
        state_dir.mkdir(parents=True, exist_ok=True)
        env["PULUMI_BACKEND_URL"] = f"file://{state_dir}"
    if "PULUMI_CONFIG_PASSPHRASE" not in os.environ and \
            "PULUMI_CONFIG_PASSPHRASE_FILE" not in os.environ:
        env["PULUMI_CONFIG_PASSPHRASE"] = ""
    env.setdefault("PULUMI_SKIP_UPDATE_CHECK", "true")
    return env


def default_factory(**kwargs: Any) -> Any:
    """`create_or_select_stack` for a local program (the project directory)."""
    from pulumi import automation as auto

    return auto.create_or_select_stack(**kwargs)


def open_stack(factory: Callable[..., Any] | None, stack_name: str, project_dir: Path,
               env: Mapping[str, str]) -> Any:
    """Select or create the stack; a missing CLI or project file becomes one sentence."""
    if factory is None:
        if not any((project_dir / f"Pulumi.{ext}").exists() for ext in ("yaml", "yml", "json")):
            raise UserError(f"{project_dir} has no Pulumi.yaml; run from the scalelab checkout or "
                            "pass the project directory that holds it.")
        factory = default_factory
        from pulumi.automation import LocalWorkspaceOptions

        opts: Any = LocalWorkspaceOptions(env_vars=dict(env))
    else:
        opts = {"env_vars": dict(env)}
    try:
        return factory(stack_name=stack_name, work_dir=str(project_dir), opts=opts)
    except FileNotFoundError:
        raise UserError(f"the `pulumi` command was not found; {INSTALL_HINT} and make sure it "
                        "is on PATH.") from None
    except Exception as exc:  # CommandError, InvalidVersionError, ...
        raise UserError(f"pulumi could not select or create stack {stack_name!r}: "
                        f"{error_line(exc)}.") from None


def error_line(exc: BaseException, limit: int = 300) -> str:
    """The telling line of a CLI failure (`error: ...`), not its whole stdout dump."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:
        at = line.lower().find("error:")
        if at == 0 or (at > 0 and line[at - 1] == " "):
            return line[at:][:limit].rstrip(".")
    return (lines[-1] if lines else type(exc).__name__)[:limit].rstrip(".")


# ---- run config -----------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def config_overrides(variant: Variant, run_id: str) -> dict[str, Any]:
    """`scalelab:` settings where `variant` differs from its stack file, plus the run id.

    The runner may hand over a Variant changed on the command line (another app, workers...):
    what is deployed must be what is measured and priced, so those differences become config.
    """
    try:
        base = load_variant(variant.source_file or variant.name)
    except UserError:
        base = Variant(name=variant.name)
    settings: dict[str, Any] = {}
    for key, (attr, _kind) in _FIELDS.items():
        if attr == "run_id":
            continue
        value = getattr(variant, attr)
        if value != getattr(base, attr):
            settings[key] = value
    for key, (attr, _cls, sub_fields) in _NESTED.items():
        value = getattr(variant, attr)
        if _plain(value) != _plain(getattr(base, attr)):
            settings[key] = {sub: _plain(getattr(value, sub_attr))
                             for sub, (sub_attr, _k) in sub_fields.items()}
    settings["runId"] = run_id
    return settings


def stack_config_dir(project_dir: Path) -> Path:
    """Where the CLI keeps `Pulumi.<stack>.yaml` (the project's `stackConfigDir`, if set)."""
    for name in ("Pulumi.yaml", "Pulumi.yml"):
        path = project_dir / name
        if path.exists():
            try:
                doc = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError):
                doc = {}
            if isinstance(doc, Mapping) and doc.get("stackConfigDir"):
                return project_dir / str(doc["stackConfigDir"])
    return project_dir


def write_run_config(variant: Variant, run_id: str, project_dir: Path, out_dir: Path) -> Path:
    """Copy the stack file (with its encryptionsalt) plus this run's settings into out_dir."""
    candidates = [stack_config_dir(project_dir) / f"Pulumi.{variant.name}.yaml"]
    if variant.source_file:
        candidates.append(Path(variant.source_file))
    doc: dict[str, Any] = {}
    for path in candidates:
        if path.exists():
            loaded = yaml.safe_load(path.read_text()) or {}
            doc = dict(loaded) if isinstance(loaded, Mapping) else {}
            break
    config = dict(doc.get("config") or {})
    for key, value in config_overrides(variant, run_id).items():
        config[f"{PROJECT}:{key}"] = value
    config["aws:region"] = variant.region
    doc["config"] = config
    out = out_dir / f"Pulumi.{variant.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# written by scalelab for run {run_id}; the source is "
                   f"stacks/Pulumi.{variant.name}.yaml\n" + yaml.safe_dump(doc, sort_keys=False))
    return out


def plain_outputs(up_result: Any) -> dict[str, Any]:
    """`UpResult.outputs` holds OutputValue objects; the runner wants plain values."""
    raw = getattr(up_result, "outputs", None) or {}
    return {key: getattr(value, "value", value) for key, value in raw.items()}
