"""Issue 12 #10: variant names become parts of AWS names; the longest must still fit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stacks.preview import run_program
from stacks.variant import MAX_NAME_LENGTH, VariantError, load_variant, variant_from_settings

AUTONAME_SUFFIX = 8
"""Pulumi's autonaming appends "-" and 7 random characters."""
LIMITS = {"aws:lb/loadBalancer:LoadBalancer": 32, "aws:lb/targetGroup:TargetGroup": 32,
          "aws:s3/bucket:Bucket": 63, "aws:iam/role:Role": 64}

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


def test_the_longest_allowed_name_fits_every_autonamed_resource() -> None:
    name = "s" + "x" * (MAX_NAME_LENGTH - 1)
    variant = replace(load_variant("scale-out"), name=name, source_file="")
    variant.validate()
    run = run_program(variant)
    seen = set()
    for resource in run.resources:
        limit = LIMITS.get(resource.type)
        if limit is not None:
            seen.add(resource.type)
            assert len(resource.name) + AUTONAME_SUFFIX <= limit, resource.name
            assert resource.name == resource.name.lower()
    assert seen == set(LIMITS)


@pytest.mark.parametrize("name,why", [
    ("scale-out-with-swap", "at most 17"),
    ("Scale-Out", "lowercase"),
    ("scale_out", "lowercase"),
    ("scale--out", "single hyphens"),
    ("scale-out-", "not ending with a hyphen"),
    ("2xlarge", "starting with a letter"),
    ("internal-lb", "may not begin with 'internal'"),
    ("sthree-box", "AWS reserves them"),
])
def test_names_that_would_break_aws_names_are_one_sentence(name: str, why: str) -> None:
    with pytest.raises(VariantError) as err:
        variant_from_settings(name, {"instanceType": "t2.micro"})
    message = str(err.value)
    assert why in message and repr(name) in message and "\n" not in message


def test_the_shipped_variants_are_valid_names() -> None:
    for name in ("micro", "micro-swap", "scale-up", "scale-out"):
        load_variant(name).validate()
