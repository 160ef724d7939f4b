"""`--live-prices`: the AWS Price List API through botocore's Stubber (moto lacks it).

Never calls AWS: every client here is stubbed, and the cache lives in a temporary folder.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import NoCredentialsError
from botocore.stub import Stubber

from experiments import pricing
from experiments.cli import main
from experiments.pricing import live_prices

TODAY = dt.date(2026, 11, 25)


def _item(usd: str, usagetype: str = "USE1-BoxUsage:t2.micro", unit: str = "Hrs") -> str:
    """One PriceList entry as the API sends it: a JSON *string*."""
    return json.dumps({
        "product": {"sku": "SKU1", "attributes": {"usagetype": usagetype}},
        "terms": {"OnDemand": {"SKU1.JRTCKXETXF": {"priceDimensions": {
            "SKU1.JRTCKXETXF.6YS6EN2CT7": {"unit": unit, "pricePerUnit": {"USD": usd}}}}}},
    })


def _client() -> Any:
    session = botocore.session.get_session()
    return session.create_client("pricing", region_name="us-east-1",
                                 aws_access_key_id="testing", aws_secret_access_key="testing")


def _filters(**terms: str) -> list[dict[str, str]]:
    """Every query also asks for locationType "AWS Region" (no Local Zone, no Outpost)."""
    terms = {**terms, "locationType": "AWS Region"}
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in terms.items()]


def _expect(stub: Stubber, service: str, items: list[str], **terms: str) -> None:
    stub.add_response("get_products", {"PriceList": items, "FormatVersion": "aws_v1"},
                      {"ServiceCode": service, "Filters": _filters(**terms),
                       "FormatVersion": "aws_v1", "MaxResults": 100})


def _queue_full_answer(stub: Stubber, region: str = "us-east-1", t2: str = "0.0117") -> None:
    _expect(stub, "AmazonEC2", [_item(t2)], instanceType="t2.micro", regionCode=region,
            operatingSystem="Linux", tenancy="Shared", preInstalledSw="NA",
            capacitystatus="Used")
    _expect(stub, "AWSELB", [_item("0.0226", "USE1-LoadBalancerUsage"),
                             _item("0.0081", "USE1-LCUUsage", "LCU-Hrs")],
            productFamily="Load Balancer-Application", regionCode=region)
    _expect(stub, "AmazonEC2", [_item("0.081", "USE1-EBS:VolumeUsage.gp3", "GB-Mo")],
            productFamily="Storage", volumeApiName="gp3", regionCode=region)
    _expect(stub, "AmazonVPC", [_item("0.005", "USE1-PublicIPv4:IdleAddress"),
                                _item("0.0051", "USE1-PublicIPv4:InUseAddress")],
            regionCode=region)


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any accidental client creation fails loudly; the cache goes to a temp folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def refuse() -> Any:
        raise AssertionError("a test tried to create a real pricing client")

    monkeypatch.setattr(pricing, "client_factory", refuse)


def test_live_prices_parsed_and_cached(tmp_path: Path) -> None:
    client = _client()
    with Stubber(client) as stub:
        _queue_full_answer(stub)
        table = live_prices("us-east-1", ["t2.micro"], client=client, cache=tmp_path,
                            today=TODAY)
        stub.assert_no_pending_responses()
    assert table.instance("t2.micro") == 0.0117
    assert (table.alb_hour, table.alb_lcu_hour) == (0.0226, 0.0081)
    assert table.gp3_gb_month == 0.081
    assert table.public_ipv4_hour == 0.0051  # the in-use address, not the idle one
    assert table.source == "AWS Price List API (2026-11-25)" and table.date == "2026-11-25"
    cached = json.loads((tmp_path / "prices-2026-11-25.json").read_text())
    assert cached["us-east-1"]["instance_usd_hour"] == {"t2.micro": 0.0117}

    with Stubber(client) as stub:  # nothing queued: a second API call would fail the stub
        again = live_prices("us-east-1", ["t2.micro"], client=client, cache=tmp_path,
                            today=TODAY)
    assert again.source == "AWS Price List API (cached 2026-11-25)"
    assert again.instance("t2.micro") == 0.0117


@pytest.mark.parametrize("bad_item,why", [
    ("{not json", "not JSON"),
    (json.dumps({"product": {}, "terms": {}}), "lacks terms.OnDemand"),
    (json.dumps({"terms": {"OnDemand": {"S": {"priceDimensions": {"D": {
        "pricePerUnit": {"USD": "0.0000000000"}}}}}}}), "no nonzero"),
])
def test_malformed_answer_falls_back_with_a_note(tmp_path: Path, bad_item: str,
                                                 why: str) -> None:
    client = _client()
    with Stubber(client) as stub:
        _expect(stub, "AmazonEC2", [bad_item], instanceType="t2.micro", regionCode="us-east-1",
                operatingSystem="Linux", tenancy="Shared", preInstalledSw="NA",
                capacitystatus="Used")
        table = live_prices("us-east-1", ["t2.micro"], client=client, cache=tmp_path,
                            today=TODAY)
    assert table.source.startswith("embedded")
    assert table.instance("t2.micro") == 0.0116
    assert any("live prices unavailable" in n and why in n for n in table.notes)
    assert not (tmp_path / "prices-2026-11-25.json").exists()  # a bad answer is never cached


def test_empty_answer_and_api_error_fall_back(tmp_path: Path) -> None:
    client = _client()
    with Stubber(client) as stub:
        _expect(stub, "AmazonEC2", [], instanceType="t2.micro", regionCode="us-east-1",
                operatingSystem="Linux", tenancy="Shared", preInstalledSw="NA",
                capacitystatus="Used")
        empty = live_prices("us-east-1", ["t2.micro"], client=client, cache=tmp_path,
                            today=TODAY)
    assert any("no product for t2.micro" in n for n in empty.notes)
    with Stubber(client) as stub:
        stub.add_client_error("get_products", service_error_code="AccessDeniedException",
                              service_message="not authorized", http_status_code=403)
        denied = live_prices("us-east-1", ["t2.micro"], client=client, cache=tmp_path,
                             today=TODAY)
    assert denied.source.startswith("embedded")
    assert any("AccessDenied" in n for n in denied.notes)


def test_no_credentials_falls_back(tmp_path: Path) -> None:
    class NoCreds:
        def get_products(self, **_: Any) -> Any:
            raise NoCredentialsError()

    table = live_prices("ap-northeast-2", ["t2.micro"], client=NoCreds(), cache=tmp_path,
                        today=TODAY)
    assert table.instance("t2.micro") == 0.0144
    assert any("Unable to locate credentials" in n for n in table.notes)


def test_pagination_is_followed(tmp_path: Path) -> None:
    client = _client()
    terms = dict(regionCode="us-east-1")
    with Stubber(client) as stub:
        _expect(stub, "AmazonEC2", [_item("0.0117")], instanceType="t2.micro",
                regionCode="us-east-1", operatingSystem="Linux", tenancy="Shared",
                preInstalledSw="NA", capacitystatus="Used")
        _expect(stub, "AWSELB", [_item("0.0226", "USE1-LoadBalancerUsage"),
                                 _item("0.0081", "USE1-LCUUsage")],
                productFamily="Load Balancer-Application", regionCode="us-east-1")
        _expect(stub, "AmazonEC2", [_item("0.081")], productFamily="Storage",
                volumeApiName="gp3", regionCode="us-east-1")
        stub.add_response("get_products", {"PriceList": [_item("0.1", "USE1-NatGateway-Hours")],
                                           "NextToken": "page2"},
                          {"ServiceCode": "AmazonVPC", "Filters": _filters(**terms),
                           "FormatVersion": "aws_v1", "MaxResults": 100})
        stub.add_response("get_products", {"PriceList": [_item("0.0052",
                                                               "USE1-PublicIPv4:InUseAddress")]},
                          {"ServiceCode": "AmazonVPC", "Filters": _filters(**terms),
                           "FormatVersion": "aws_v1", "MaxResults": 100, "NextToken": "page2"})
        table = live_prices("us-east-1", ["t2.micro"], client=client, cache=tmp_path,
                            today=TODAY)
    assert table.public_ipv4_hour == 0.0052


def test_cost_command_with_live_prices(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    client = _client()
    stub = Stubber(client)
    _queue_full_answer(stub, t2="0.0120")
    stub.activate()
    monkeypatch.setattr(pricing, "client_factory", lambda: client)
    try:
        assert main(["cost", "--variants", "micro", "--live-prices", "--json"]) == 0
    finally:
        stub.deactivate()
    data = json.loads(capsys.readouterr().out)
    assert data[0]["items"]["instances"] == 0.012
    assert data[0]["price_source"].startswith("AWS Price List API")


def test_two_matching_products_are_not_guessed_between(tmp_path: Path) -> None:
    """Taking the first of several matches could price the wrong product: fall back, say why."""
    client = _client()
    with Stubber(client) as stub:
        _expect(stub, "AmazonEC2", [_item("0.0117"), _item("0.0139", "USE1-HostBoxUsage:t2.micro")],
                instanceType="t2.micro", regionCode="us-east-1", operatingSystem="Linux",
                tenancy="Shared", preInstalledSw="NA", capacitystatus="Used")
        table = live_prices("us-east-1", ["t2.micro"], client=client, cache=tmp_path,
                            today=TODAY)
        stub.assert_no_pending_responses()
    assert table.source.startswith("embedded")
    note = table.notes[-1]
    assert "2 products for t2.micro in us-east-1 where one was expected" in note
    assert "USE1-HostBoxUsage:t2.micro" in note and "embedded prices" in note
def test_live_prices_a_region_outside_the_embedded_table(tmp_path: Path) -> None:
    """sa-east-1 has no embedded prices: the Price List API alone prices it (and is cached)."""
    client = _client()
    with Stubber(client) as stub:
        _queue_full_answer(stub, region="sa-east-1", t2="0.0186")
        table = live_prices("sa-east-1", ["t2.micro"], client=client, cache=tmp_path,
                            today=TODAY)
        stub.assert_no_pending_responses()
    assert table.instance("t2.micro") == 0.0186 and table.region == "sa-east-1"
    assert table.source == "AWS Price List API (2026-11-25)"


def test_live_prices_a_type_unpriced_in_the_region(tmp_path: Path) -> None:
    """m7i.large has no embedded ap-southeast-1 price; live pricing fills it."""
    client = _client()
    with Stubber(client) as stub:
        _expect(stub, "AmazonEC2", [_item("0.1176", "APS1-BoxUsage:m7i.large")],
                instanceType="m7i.large", regionCode="ap-southeast-1", operatingSystem="Linux",
                tenancy="Shared", preInstalledSw="NA", capacitystatus="Used")
        _expect(stub, "AWSELB", [_item("0.0252", "APS1-LoadBalancerUsage"),
                                 _item("0.008", "APS1-LCUUsage", "LCU-Hrs")],
                productFamily="Load Balancer-Application", regionCode="ap-southeast-1")
        _expect(stub, "AmazonEC2", [_item("0.096", "APS1-EBS:VolumeUsage.gp3", "GB-Mo")],
                productFamily="Storage", volumeApiName="gp3", regionCode="ap-southeast-1")
        _expect(stub, "AmazonVPC", [_item("0.005", "APS1-PublicIPv4:InUseAddress")],
                regionCode="ap-southeast-1")
        table = live_prices("ap-southeast-1", ["m7i.large"], client=client, cache=tmp_path,
                            today=TODAY)
    assert table.instance("m7i.large") == 0.1176 and table.alb_hour == 0.0252


def test_unreachable_api_outside_the_table_is_one_sentence(tmp_path: Path) -> None:
    from botocore.exceptions import EndpointConnectionError

    class Offline:
        def get_products(self, **_: Any) -> Any:
            raise EndpointConnectionError(endpoint_url="https://pricing.us-east-1.amazonaws.com")

    from experiments.errors import UserError

    with pytest.raises(UserError) as region_err:
        live_prices("sa-east-1", ["t2.micro"], client=Offline(), cache=tmp_path, today=TODAY)
    msg = str(region_err.value)
    assert "live prices for sa-east-1 failed" in msg and "no prices for sa-east-1" in msg
    assert "\n" not in msg
    with pytest.raises(UserError, match="no ap-southeast-1 price for m7i.large"):
        live_prices("ap-southeast-1", ["m7i.large"], client=Offline(), cache=tmp_path,
                    today=TODAY)
    # inside the table the same outage falls back to the embedded price with a note
    table = live_prices("eu-west-1", ["t3.micro"], client=Offline(), cache=tmp_path, today=TODAY)
    assert table.instance("t3.micro") == 0.0114
    assert any("live prices unavailable" in n for n in table.notes)


def test_cost_command_any_region_with_live_prices(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    client = _client()
    stub = Stubber(client)
    _queue_full_answer(stub, region="sa-east-1", t2="0.0186")
    stub.activate()
    monkeypatch.setattr(pricing, "client_factory", lambda: client)
    try:
        assert main(["cost", "--variants", "micro", "--region", "sa-east-1", "--live-prices",
                     "--json"]) == 0
    finally:
        stub.deactivate()
    data = json.loads(capsys.readouterr().out)
    assert data[0]["region"] == "sa-east-1" and data[0]["items"]["instances"] == 0.0186
    # without --live-prices the region is refused in one sentence
    assert main(["cost", "--variants", "micro", "--region", "sa-east-1"]) == 2
    assert "unknown region 'sa-east-1'" in capsys.readouterr().err
