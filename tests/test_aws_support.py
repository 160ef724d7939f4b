"""Shared doubles for the tests/test_aws_*.py files: fake credentials, moto, a loopback app.

No fixture here sends anything beyond loopback: moto intercepts boto3 in-process (or listens
on 127.0.0.1), the instance metadata service is disabled and every app is on 127.0.0.1.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

REGION = "us-east-1"
AWS_ENV_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                   "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE",
                   "AWS_ENDPOINT_URL", "PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE",
                   "PULUMI_CONFIG_PASSPHRASE_FILE")


def fake_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials only, no ~/.aws, no metadata service (169.254.169.254 is not loopback)."""
    for name in AWS_ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@contextmanager
def moto_session(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """A boto3 session inside moto's in-process mock (each test module wraps it in a fixture)."""
    fake_aws(monkeypatch, tmp_path)
    with mock_aws():
        yield boto3.Session(region_name=REGION)


def tags(run_id: str, variant: str = "micro") -> list[dict[str, str]]:
    return [{"Key": "project", "Value": "scalelab"}, {"Key": "run-id", "Value": run_id},
            {"Key": "variant", "Value": variant}, {"Key": "stack", "Value": variant}]


def instances(session: Any, n: int, run_id: str, variant: str = "micro") -> list[str]:
    """Running instances tagged like the Pulumi program tags them (root volume included)."""
    ec2 = session.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    made = ec2.run_instances(ImageId=image, InstanceType="t2.micro", MinCount=n, MaxCount=n,
                             TagSpecifications=[
                                 {"ResourceType": "instance", "Tags": tags(run_id, variant)},
                                 {"ResourceType": "volume", "Tags": tags(run_id, variant)}])
    return [i["InstanceId"] for i in made["Instances"]]


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status = self.server.status  # type: ignore[attr-defined]
        body = b"ok" if status == 200 else b"starting"
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback_app() -> Iterator[ThreadingHTTPServer]:
    """A tiny app on 127.0.0.1 whose status the test sets (200 = healthy)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.status = 200  # type: ignore[attr-defined]
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"
