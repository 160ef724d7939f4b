"""The Variant model: the four stack files parse, and bad config fails with one sentence."""

from pathlib import Path

import pytest

from stacks.variant import VariantError, available_variants, load_variant, load_variants


def test_the_four_stacks_parse_as_the_design_says() -> None:
    variants = {v.name: v for v in load_variants()}
    assert available_variants() == ["micro", "micro-swap", "scale-up", "scale-out"]
    micro, swap, up, out = (variants[n] for n in available_variants())
    assert (micro.instance_type, micro.count, micro.swap_mib, micro.load_balancer) == (
        "t2.micro", 1, 0, False)
    assert (swap.instance_type, swap.swap_mib) == ("t2.micro", 2048)
    assert (up.instance_type, up.count, up.swap_mib, up.credit_mode) == (
        "t3.medium", 1, 0, "unlimited")
    assert (out.instance_type, out.count, out.swap_mib, out.load_balancer) == (
        "t2.micro", 3, 2048, True)
    assert micro.gunicorn.workers == 2 and micro.gunicorn.timeout_s == 30
    assert out.health_check.path == "/healthz"
    assert micro.tags == {"project": "scalelab", "variant": "micro", "stack": "micro",
                          "run-id": "manual"}


def write_stack(tmp_path: Path, body: str, name: str = "bad") -> Path:
    path = tmp_path / f"Pulumi.{name}.yaml"
    path.write_text("config:\n" + body)
    return path


@pytest.mark.parametrize(("body", "key", "valid"), [
    ("  scalelab:instanceType: t9.huge\n", "instanceType", "t2.micro"),
    ("  scalelab:count: 0\n", "count", "at least 1"),
    ("  scalelab:count: 3\n", "count", "loadBalancer"),
    ("  scalelab:swapMib: -1\n", "swapMib", "0 (no swap)"),
    ("  scalelab:swapMib: 9000\n", "swapMib", "root volume"),
    ("  scalelab:count: 2\n  scalelab:loadBalancer: true\n"
     "  scalelab:network: {availabilityZones: 1}\n", "network.availabilityZones", "at least 2"),
    ("  scalelab:count: many\n", "count", "whole number"),
    ("  scalelab:gunicorn: {workerClass: eventlet}\n", "gunicorn.workerClass", "'sync'"),
    ("  scalelab:colour: blue\n", "colour", "valid:"),
])
def test_bad_config_fails_with_one_sentence(tmp_path: Path, body: str, key: str,
                                            valid: str) -> None:
    path = write_stack(tmp_path, body)
    with pytest.raises(VariantError) as info:
        load_variant(path)
    message = str(info.value)
    assert f"scalelab:{key}" in message
    assert valid in message
    assert str(path) in message
    assert "\n" not in message and message.endswith(".")


def test_unknown_variant_names_the_valid_ones() -> None:
    with pytest.raises(VariantError, match="unknown variant 'huge'; valid: micro, micro-swap"):
        load_variant("huge")


def test_pulumi_style_string_values_are_accepted(tmp_path: Path) -> None:
    path = write_stack(tmp_path, '  scalelab:count: "2"\n  scalelab:loadBalancer: "true"\n'
                                 '  scalelab:swapMib: "1024"\n', name="strings")
    variant = load_variant(path)
    assert (variant.name, variant.count, variant.load_balancer, variant.swap_mib) == (
        "strings", 2, True, 1024)
