"""Defect 1 of issue 12: the target policy belongs to the backend, not to the load driver."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from test_aws_support import fake_aws

from experiments.backends.aws import AwsBackend
from experiments.errors import UserError
from experiments.load.driver import LoadSession, LoadSettings
from stacks.variant import PROJECT_DIR, load_variant

PUBLIC = "http://scale-out-lb-alb-1a2b3c4-123456789.us-east-1.elb.amazonaws.com"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Any connection attempt is recorded and refused: nothing may leave this process."""
    tried: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        tried.append(args)
        raise AssertionError(f"a connection was attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return tried


def test_a_public_dns_name_reaches_the_driver_unchanged(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        no_network: list[Any]) -> None:
    fake_aws(monkeypatch, tmp_path)
    backend = AwsBackend(state_dir=tmp_path / "state", workspace_factory=lambda **kw: None)
    deployment = backend._deployment(load_variant("scale-out"),
                                     {"url": PUBLIC, "instance_ids": ["i-1", "i-2", "i-3"]},
                                     time.time())
    assert deployment.url == PUBLIC
    session = LoadSession(deployment.url, LoadSettings(PROJECT_DIR / "shop" / "locustfile.py"))
    assert session.url == PUBLIC  # accepted; never entered, so nothing was sent
    assert no_network == []


def test_a_url_output_that_is_not_http_is_one_sentence(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake_aws(monkeypatch, tmp_path)
    backend = AwsBackend(state_dir=tmp_path / "state", workspace_factory=lambda **kw: None)
    with pytest.raises(UserError, match="is not an http"):
        backend._deployment(load_variant("micro"), {"url": "ec2-1-2-3-4.compute-1.amazonaws.com",
                                                    "instance_ids": ["i-1"]}, time.time())


def test_the_local_deployment_refuses_anything_but_loopback() -> None:
    from experiments.backends.local import LocalDeployment

    with pytest.raises(UserError, match="not on loopback"):
        LocalDeployment(load_variant("micro"), PUBLIC, ["i0"], time.time(), {}, owner=None)  # type: ignore[arg-type]
