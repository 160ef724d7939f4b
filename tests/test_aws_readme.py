"""Issue 12 #9: the README's by-hand walk-through must not delete the variant's stack file."""

from __future__ import annotations

import re

from stacks.variant import PROJECT_DIR


def test_every_stack_rm_in_the_readme_keeps_the_stack_file() -> None:
    text = (PROJECT_DIR / "README.md").read_text()
    removals = re.findall(r"pulumi stack rm[^\n`]*", text)
    assert removals, "the walk-through should say how to remove the stack"
    for command in removals:
        assert "--preserve-config" in command, command
