"""Moving in and drift, end to end against localstripe (a Stripe emulator): customers, products,
plans, subscriptions and a payment are made with the official `stripe` library before the engine
hears anything; `import` gives the right codes; a cancellation made without a webhook is found
by `reconcile` and settled by `reconcile --fix`. On SQLite and PostgreSQL.

What localstripe lacks, worked around here: it has no disputes, credit notes nor Checkout
Sessions (its lists answer 404), so the import and reconcile read every other list against it
(those three are tested against the recorded Stripe API); it has no Price objects, so
subscriptions name plans (its payloads are an older API version's shape, which the engine reads
like any other). No webhook endpoint is registered: the engine learns only by reading.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe
from click.testing import CliRunner

from adapters import cli, importing, reconcile
from adapters.bootstrap import bootstrap
from adapters.config import settings_from_dict
from domain.aggregates import Buyer, buyer_id
from domain.catalogue import Catalogue
from domain.rules import Entitlement
from tests.conftest import PROJECT, config_doc
from tests.recorded_stripe import free_port

KEY = "sk_test_localstripe"
MISSING = ("/v1/disputes", "/v1/credit_notes", "/v1/checkout/sessions")


@pytest.fixture(scope="module")
def localstripe() -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "tests.localstripe_server", str(port)]
    process = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/v1/customers", auth=(KEY, ""), timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "localstripe did not start"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def stripe_client(localstripe: str) -> stripe.StripeClient:
    requests.delete(f"{localstripe}/_config/data", timeout=5)  # every test from an empty store
    return stripe.StripeClient(KEY, base_addresses={"api": localstripe})


@pytest.fixture(autouse=True)
def lists_localstripe_has(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = tuple(item for item in importing.LISTS if item[0] not in MISSING)
    monkeypatch.setattr(importing, "LISTS", kept)
    monkeypatch.setattr(reconcile, "LISTS", kept)


def subscriber(client: stripe.StripeClient, customid: str, plan: str, **sub: Any) -> Any:
    """A customer with a card, subscribed to `plan` (metadata.customid on the subscription;
    on the customer too for one of them, as merchants do either)."""
    customer = client.v1.customers.create(params={"email": f"{customid}@example.com"})
    card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}
    method = client.v1.payment_methods.create(params={"type": "card", "card": card})
    client.v1.payment_methods.attach(method.id, params={"customer": customer.id})
    client.v1.customers.update(
        customer.id, params={"invoice_settings": {"default_payment_method": method.id}}
    )
    params = {"customer": customer.id, "items": [{"plan": plan}]}
    params["metadata"] = {"customid": customid}
    return client.v1.subscriptions.create(params={**params, **sub})


def merchant(client: stripe.StripeClient) -> dict[str, Any]:
    """A merchant's Stripe account before it moves in: two products, two subscribers (one
    set to cancel at the period's end) and a one-off payment."""
    pro = client.v1.products.create(params={"name": "Pro"})
    basic = client.v1.products.create(params={"name": "Basic"})
    for plan, product in (("plan_pro", pro.id), ("plan_basic", basic.id)):
        fields = {"amount": 1000, "currency": "usd", "interval": "month", "product": product}
        client.v1.plans.create(params={"id": plan, **fields})
    ada = subscriber(client, "user_ada", "plan_pro")
    bob = subscriber(client, "user_bob", "plan_basic")
    client.v1.subscriptions.update(bob.id, params={"cancel_at_period_end": True})
    payment = {"amount": 500, "currency": "usd", "customer": ada.customer, "confirm": True}
    client.v1.payment_intents.create(params={**payment, "payment_method": "pm_card_visa"})
    catalogue = {
        "skus": [{"skuId": "pro", "productId": pro.id}, {"skuId": "basic", "productId": basic.id}],
        "permissions": [
            {"permissionId": "pro", "skuIds": ["pro"]},
            {"permissionId": "access", "skuIds": ["pro", "basic"]},
        ],
    }
    return {"ada": ada, "bob": bob, "catalogue": catalogue}


def config_file(tmp_path: Path, database_url: str, api: str) -> Path:
    path = tmp_path / "entitlements.toml"
    path.write_text(
        f'[database]\nurl = "{database_url}"\n\n[apps.demo]\n'
        f'webhook_secrets = ["whsec_test_demo"]\nrest_api_keys = ["demo-key"]\n'
        f'stripe_api_key = "{KEY}"\nstripe_api_base = "{api}"\n'
        "stripe_max_requests_per_second = 100\n"
    )
    return path


def run(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli.main, ["--config", str(config), *args])


def codes(database_url: str, customid: str) -> dict[str, int]:
    engine = bootstrap(settings_from_dict(config_doc(database_url), env={}))
    try:
        engine.project()
        found = engine.entitlements.permissions("demo", customid, int(time.time()))
        return {p.permission_id: int(p.entitlement) for p in found}
    finally:
        engine.close()


def test_import_then_drift_found_by_reconcile_and_settled_by_fix(
    tmp_path, database_url, stripe_client, localstripe
):
    account = merchant(stripe_client)
    config = config_file(tmp_path, database_url, localstripe)
    engine = bootstrap(settings_from_dict(config_doc(database_url), env={}))
    engine.catalogues.replace("demo", Catalogue.from_json(account["catalogue"]))
    engine.close()

    imported = run(config, "import", "--app", "demo")
    assert imported.exit_code == 0, imported.output
    assert "subscription 2" in imported.stdout and "payment_intent" in imported.stdout
    assert codes(database_url, "user_ada") == {"access": 5, "pro": 5}
    assert codes(database_url, "user_bob") == {"access": 4, "pro": -9}
    assert run(config, "reconcile").exit_code == 0  # the import left nothing to settle

    ada = account["ada"]
    stripe_client.v1.subscriptions.cancel(ada.id)  # no webhook: the engine is not told
    found = run(config, "reconcile")
    assert found.exit_code == 1, found.output
    rows = [line.split() for line in found.stdout.splitlines()]
    pro = next(row for row in rows if row[:2] == ["user_ada", "pro"])
    assert pro[2:4] == ["5", str(int(Entitlement.EXPIRED_VOLUNTARY))]
    assert pro[4:6] == [ada.id, "canceled"] and ada.id in pro[6]
    assert codes(database_url, "user_ada")["pro"] == 5  # reconcile alone writes nothing

    fixed = run(config, "reconcile", "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert fixed.stdout.strip().splitlines()[-1].endswith("remaining 0")
    assert codes(database_url, "user_ada")["pro"] == Entitlement.EXPIRED_VOLUNTARY
    assert run(config, "reconcile").exit_code == 0
    engine = bootstrap(settings_from_dict(config_doc(database_url), env={}))
    try:
        history = engine.log.history(buyer_id("demo", ada.customer))
    finally:
        engine.close()
    observed = [e for e in history if isinstance(e, Buyer.StripeObjectObserved)]
    assert [(e.object_id, e.command) for e in observed if e.object_type == "subscription"] == [
        (ada.id, "import"),
        (ada.id, "reconcile"),
    ]
