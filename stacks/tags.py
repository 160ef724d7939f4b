"""Tags every scalelab resource carries, so a sweeper can find what a run left behind."""

from __future__ import annotations

from stacks.variant import PROJECT, Variant


def resource_tags(variant: Variant, role: str) -> dict[str, str]:
    """`project`, `variant`, `stack`, `run-id` and a readable `Name` (scalelab-<variant>-<role>)."""
    return {**variant.tags, "Name": f"{PROJECT}-{variant.name}-{role}"}
