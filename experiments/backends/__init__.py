"""Backends: where a Variant becomes a running stack (local emulation, or AWS via Pulumi)."""

from __future__ import annotations

from rich.console import Console

from experiments.backends.base import Backend, Leftover


def leftovers_command(backend_name: str, delete: bool) -> int:
    """List (and with delete, remove) what earlier runs left behind."""
    console = Console()
    backend = make_backend(backend_name)
    found: list[Leftover] = list(backend.delete_leftovers()) if delete else backend.leftovers()
    verb = "removed" if delete else "found"
    if not found:
        console.print(f"No leftovers {verb} for the {backend_name} backend.")
        return 0
    for item in found:
        console.print(f"{verb}: {item.kind} {item.ident} {item.detail}".rstrip())
    if not delete:
        console.print(f"Run with --delete to remove these {len(found)} leftovers.")
    return 0


def make_backend(name: str, **options: object) -> Backend:
    if name == "local":
        from experiments.backends.local import LocalBackend

        return LocalBackend(**options)  # type: ignore[arg-type]
    if name == "aws":
        from experiments.backends.aws import AwsBackend

        return AwsBackend(**options)  # type: ignore[arg-type]
    raise ValueError(name)
