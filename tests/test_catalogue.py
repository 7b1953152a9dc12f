"""A catalogue cannot silently wipe every permission: what is not plainly a catalogue is refused
(400, Glassfy code 1010) by `PUT /v1/catalogue`, `POST /v1/catalogue/preview` and
`entitlements catalogue apply`, and nothing changes. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from adapters.cli.main import main as cli
from domain.catalogue import Catalogue, InvalidCatalogue
from tests.conftest import settle
from tests.test_entitlements_api import (
    ALI,
    ALI_UPDATED,
    AUTH,
    CATALOGUE,
    code,
    connect,
    deliver,
    real,
    setup_catalogue,
)

AT = 1714549400  # ali's subscription (real 2023-10-16 payload) is active then

NOT_A_CATALOGUE: dict[str, Any] = {
    "an unrelated object": {"foo": 1},
    "no permissions": {"skus": CATALOGUE["skus"]},
    "no skus": {"permissions": []},
    "an unknown top-level key": {**CATALOGUE, "permission": []},
    "a duplicate skuId": {
        "skus": [{"skuId": "a", "productId": "p"}, {"skuId": "a", "productId": "q"}],
        "permissions": [],
    },
    "a duplicate permissionId": {
        "skus": [{"skuId": "a", "productId": "p"}],
        "permissions": [
            {"permissionId": "x", "skuIds": ["a"]},
            {"permissionId": "x", "skuIds": []},
        ],
    },
    "a permission naming an unknown SKU": {
        "skus": [{"skuId": "a", "productId": "p"}],
        "permissions": [{"permissionId": "x", "skuIds": ["b"]}],
    },
    "a SKU with neither product nor price": {
        "skus": [{"skuId": "a", "duration": "P30D"}],
        "permissions": [],
    },
    "skus not a list": {"skus": {"skuId": "a"}, "permissions": []},
}


@pytest.mark.parametrize("case", sorted(NOT_A_CATALOGUE))
def test_the_domain_refuses_what_is_not_plainly_a_catalogue(case: str) -> None:
    with pytest.raises(InvalidCatalogue):
        Catalogue.from_json(NOT_A_CATALOGUE[case])


def test_an_explicitly_empty_catalogue_and_a_price_only_sku_are_catalogues() -> None:
    assert Catalogue.from_json({"skus": [], "permissions": []}) == Catalogue()
    priced = Catalogue.from_json(
        {"skus": [{"skuId": "eur", "priceId": "price_eur"}], "permissions": []}
    )
    assert priced.to_json() == {
        "skus": [{"skuId": "eur", "priceId": "price_eur"}],
        "permissions": [],
    }
    assert [s.sku_id for s in priced.skus_for_line("prod_any", "price_eur")] == ["eur"]
    assert Catalogue.from_json(priced.to_json()) == priced


def test_a_refused_catalogue_changes_nothing_over_http(client, engine) -> None:
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_UPDATED))
    settle(engine)
    assert code(client, "ali", at=AT) == 5
    for case, doc in NOT_A_CATALOGUE.items():
        for method, route in (("PUT", "/v1/catalogue"), ("POST", "/v1/catalogue/preview")):
            response = client.request(method, route, json=doc, headers=AUTH)
            assert response.status_code == 400, (case, route, response.text)
            body = response.json()
            assert (body["status"], body["error"]["code"]) == (400, 1010), case
            assert body["error"]["description"].startswith("invalid catalogue: "), body
    settle(engine)
    assert client.get("/v1/catalogue", headers=AUTH).json() == CATALOGUE
    assert code(client, "ali", at=AT) == 5  # nobody lost anything


def test_the_refusal_says_what_is_wrong(client) -> None:
    response = client.put("/v1/catalogue", json={"foo": 1}, headers=AUTH)
    assert "unknown keys ['foo']" in response.json()["error"]["description"]
    response = client.put("/v1/catalogue", json={"skus": []}, headers=AUTH)
    assert "missing ['permissions']" in response.json()["error"]["description"]


def write_config(tmp_path: Path, database_url: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n\n[apps.demo]\nwebhook_secrets = ["whsec_x"]\n'
    )
    return config


@pytest.mark.parametrize("dry_run", [False, True])
def test_catalogue_apply_refuses_and_changes_nothing(tmp_path, database_url, dry_run) -> None:
    config = write_config(tmp_path, database_url)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(CATALOGUE))
    applied = CliRunner().invoke(cli, ["--config", str(config), "catalogue", "apply", str(good)])
    assert applied.exit_code == 0, applied.output
    flags = ["--dry-run"] if dry_run else []
    for case, doc in NOT_A_CATALOGUE.items():
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(doc))
        args = ["--config", str(config), "catalogue", "apply", str(bad), *flags]
        refused = CliRunner().invoke(cli, args)
        assert refused.exit_code != 0, (case, refused.output)
        assert "Error:" in refused.output and "would" not in refused.output, refused.output
    again = CliRunner().invoke(cli, ["--config", str(config), "catalogue", "apply", str(good)])
    assert "catalogue unchanged" in again.output  # the refused ones were never applied


def test_a_toml_catalogue_with_an_unknown_table_is_refused(tmp_path, database_url) -> None:
    config = write_config(tmp_path, database_url)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[sku]]\nskuId = "a"\nproductId = "p"\n')  # `sku`, not `skus`
    refused = CliRunner().invoke(cli, ["--config", str(config), "catalogue", "apply", str(bad)])
    assert refused.exit_code != 0 and "unknown keys ['sku']" in refused.output, refused.output
