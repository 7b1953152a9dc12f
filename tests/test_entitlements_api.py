"""What an app's backend sees: permissions and subscribers derived from real Stripe events,
through the whole engine (webhook -> event log -> projection -> query), on SQLite and PostgreSQL.

Real payloads come from ../shared/fixtures/stripe. Where no real payload covers a case, the test
builds the event around a real object and says so.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from starlette.testclient import TestClient

from tests.conftest import API_KEYS, FIXTURES, post_webhook, settle
from tests.renderings import as_basil_invoice, as_basil_subscription

AUTH = {"Authorization": f"Bearer {API_KEYS['demo']}"}
OTHER_AUTH = {"Authorization": f"Bearer {API_KEYS['other']}"}

CATALOGUE = {
    "skus": [
        {"skuId": "ali_monthly", "productId": "prod_Q1aaAFnFaTrIJT"},
        {"skuId": "course", "productId": "prod_SPKPZ453LZJHUc"},
        {"skuId": "godgpt", "productId": "prod_SJZt7ElIbOQ4Zw"},
        {"skuId": "carledgr", "productId": "prod_SZzzobHGwDARCn"},
        {"skuId": "srm_monthly", "productId": "prod_00000000000000"},
        {"skuId": "pass_30d", "productId": "prod_PASS", "duration": "P30D"},
        {"skuId": "lifetime", "productId": "prod_LIFETIME"},
    ],
    "permissions": [
        {
            "permissionId": "premium",
            "skuIds": ["ali_monthly", "godgpt", "carledgr", "srm_monthly", "pass_30d", "lifetime"],
        },
        {"permissionId": "course", "skuIds": ["course"]},
    ],
}


def real(name: str) -> dict[str, Any]:
    for folder in ("events", "events-newer"):
        path = FIXTURES / folder / name
        if path.exists():
            return json.loads(path.read_text())
    raise FileNotFoundError(name)


def deliver(client: TestClient, *events: dict[str, Any] | str) -> None:
    """Post the events as Stripe would, and let the projector apply them."""
    for event in events:
        raw = event if isinstance(event, str) else json.dumps(event)
        response = post_webhook(client, raw)
        assert response.status_code == 200, response.text
    settle(client.app.state.engine)


def setup_catalogue(client: TestClient, doc: dict[str, Any] = CATALOGUE) -> None:
    response = client.put("/v1/catalogue", json=doc, headers=AUTH)
    assert response.status_code == 200, response.text


def connect(client: TestClient, customid: str, customer: str, auth=AUTH) -> Any:
    return client.post(
        "/v1/connect_stripe", json={"customid": customid, "customerid": customer}, headers=auth
    )


def permissions(client: TestClient, customid: str, at: int | str | None = None, **params) -> dict:
    query = {"customid": customid, **params}
    if at is not None:
        query["at"] = str(at)
    response = client.get("/v1/permissions", params=query, headers=AUTH)
    assert response.status_code == 200, response.text
    return {p["permissionId"]: p for p in response.json()["all"]}


def code(client: TestClient, customid: str, at: int | None = None, permission="premium") -> int:
    return permissions(client, customid, at)[permission]["entitlement"]


# --- A subscription's life, on real payloads --------------------------------------------------

ALI = "cus_Q1b0Yi7UkcAh2A"
ALI_CREATED = "2023-10-16__customer.subscription.created__alimehndi__1.json"  # incomplete
ALI_PAID = "2023-10-16__invoice.paid__alimehndi__1.json"
ALI_UPDATED = "2023-10-16__customer.subscription.updated__alimehndi__1.json"  # active
ALI_PERIOD_END = 1717227745


def test_a_paid_subscription_grants_auto_renew_on_until_its_period_end(client) -> None:
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_CREATED), real(ALI_PAID), real(ALI_UPDATED))

    premium = permissions(client, "ali", at=1714549400)["premium"]
    assert premium == {
        "permissionId": "premium",
        "entitlement": 5,
        "isValid": True,
        "expireDate": ALI_PERIOD_END,
        "accountableSkus": [
            {
                "skuId": "ali_monthly",
                "productId": "prod_Q1aaAFnFaTrIJT",
                "store": 4,
                "isInIntroOfferPeriod": False,
                "isInTrialPeriod": False,
            }
        ],
    }
    # Within the renewal leeway (1 day) after the period end, it keeps its code ...
    assert code(client, "ali", at=ALI_PERIOD_END + 3600) == 5
    # ... and with no renewal heard of after that, the information is missing.
    assert code(client, "ali", at=ALI_PERIOD_END + 2 * 86400) == 0


def test_an_incomplete_subscription_grants_nothing_yet(client) -> None:
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_CREATED))
    assert code(client, "ali", at=1714549346) == 0


def test_delivery_order_does_not_matter(client) -> None:
    setup_catalogue(client)
    connect(client, "ali", ALI)
    # The active update and the invoice arrive before the (older) incomplete snapshot.
    deliver(client, real(ALI_UPDATED), real(ALI_PAID), real(ALI_CREATED), real(ALI_UPDATED))
    assert code(client, "ali", at=1714549400) == 5


def test_every_permission_of_the_catalogue_is_listed_never_bought_ones_as_minus_9(client) -> None:
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_UPDATED))
    course = permissions(client, "ali", at=1714549400)["course"]
    assert course == {
        "permissionId": "course",
        "entitlement": -9,
        "isValid": False,
        "expireDate": None,
        "accountableSkus": [],
    }


def test_a_canceled_by_request_subscription_is_expired_voluntary(client) -> None:
    setup_catalogue(client)
    connect(client, "learner", "cus_ST1RtHydC4cdb5")
    deliver(
        client,
        real("2023-10-16__invoice.payment_succeeded__mvpcourseforger__1.json"),
        real("2023-10-16__customer.subscription.deleted__mvpcourseforger__1.json"),
    )
    course = permissions(client, "learner", at=1752066500)["course"]
    assert (course["entitlement"], course["isValid"]) == (-5, False)


def test_a_basil_subscription_set_to_cancel_at_period_end_is_auto_renew_off(client) -> None:
    setup_catalogue(client)
    connect(client, "god", "cus_SLwBIqeMhsEIAn")
    deliver(client, real("2025-04-30.basil__customer.subscription.updated__godgpt__1.json"))
    premium = permissions(client, "god", at=1747841200)["premium"]
    assert (premium["entitlement"], premium["expireDate"]) == (4, 1747926888)
    # Once the period it was paid for ends, it has ended by the customer's choice.
    assert code(client, "god", at=1747926888 + 10) == -5


def test_a_basil_subscription_takes_its_period_end_from_its_items(client) -> None:
    setup_catalogue(client)
    connect(client, "car", "cus_SZzz5r9mMsh6fp")
    deliver(
        client,
        real("2025-05-28.basil__customer.subscription.created__carledgr__1.json"),
        real("2025-05-28.basil__invoice.payment_succeeded__carledgr__1.json"),
    )
    premium = permissions(client, "car", at=1751083500)["premium"]
    assert (premium["entitlement"], premium["expireDate"]) == (5, 1753675447)


def test_the_same_lifecycle_in_2020_and_basil_shapes_gives_the_same_permissions(
    client, engine
) -> None:
    setup_catalogue(client)
    old_sub = real("customer.subscription.created__sse__1.json")
    old_invoice = real("invoice.paid__sse_be3642db__1.json")
    # Hand-built: one customer's subscription and invoice from two real 2020-03-02 payloads
    # (made to share a customer and subscription), then the same two in the basil shape.
    catalogue = copy.deepcopy(CATALOGUE)
    catalogue["skus"].append({"skuId": "sse", "productId": "prod_Ip4vqwv3EJ7Mi0"})
    catalogue["permissions"][0]["skuIds"].append("sse")
    setup_catalogue(client, catalogue)
    for customid, suffix in (("old", "_old"), ("new", "_new")):
        sub, invoice = copy.deepcopy(old_sub), copy.deepcopy(old_invoice)
        customer, sub_id = f"cus_SSE{suffix}", f"sub_SSE{suffix}"
        sub["data"]["object"].update(customer=customer, id=sub_id)
        invoice["data"]["object"].update(customer=customer, subscription=sub_id)
        for line in invoice["data"]["object"]["lines"]["data"]:
            line["subscription"] = sub_id
        if customid == "new":
            sub, invoice = as_basil_subscription(sub), as_basil_invoice(invoice)
        sub["id"], invoice["id"] = sub["id"] + suffix, invoice["id"] + suffix
        connect(client, customid, customer)
        deliver(client, sub, invoice)
    at = old_sub["created"] + 60
    assert permissions(client, "old", at=at) == permissions(client, "new", at=at)
    assert code(client, "old", at=at) == 5


# --- One-time purchases, refunds, disputes ----------------------------------------------------


def payment_checkout(session_id: str, payment_intent: str, **metadata: str) -> dict[str, Any]:
    """A payment-mode checkout built on the real 2020-08-27 payload, with our metadata."""
    event = real("checkout.session.completed__srm__1.json")
    event["id"] = f"evt_{session_id}"
    session = event["data"]["object"]
    session.update(
        id=session_id,
        payment_intent=payment_intent,
        customer=None,
        metadata=metadata,
        payment_status="paid",
        mode="payment",
    )
    return event


def test_a_one_time_pass_is_non_renewing_until_its_duration_ends(client) -> None:
    setup_catalogue(client)
    checkout = payment_checkout("cs_pass", "pi_pass", customid="buyer-1", product="prod_PASS")
    deliver(client, checkout)
    paid_at = checkout["created"]
    premium = permissions(client, "buyer-1", at=paid_at + 60)["premium"]
    assert (premium["entitlement"], premium["expireDate"]) == (3, paid_at + 30 * 86400)
    assert code(client, "buyer-1", at=paid_at + 31 * 86400) == -5


def test_a_lifetime_purchase_never_expires(client) -> None:
    setup_catalogue(client)
    deliver(client, payment_checkout("cs_life", "pi_life", customid="buyer-2", sku="lifetime"))
    premium = permissions(client, "buyer-2")["premium"]
    assert (premium["entitlement"], premium["expireDate"]) == (3, None)


def test_a_lost_dispute_revokes_the_purchase_it_disputes(client) -> None:
    setup_catalogue(client)
    dispute = real("charge.dispute.closed__lago__1.json")  # real: lost, names no customer
    payment_intent = dispute["data"]["object"]["payment_intent"]
    checkout = payment_checkout("cs_disp", payment_intent, customid="buyer-3", sku="lifetime")
    checkout["created"] = dispute["created"] - 3600
    deliver(client, checkout)
    assert code(client, "buyer-3") == 3
    deliver(client, dispute)
    assert code(client, "buyer-3") == -8


def test_a_won_dispute_keeps_access(client) -> None:
    setup_catalogue(client)
    dispute = real("charge.dispute.closed__lago__2.json")  # the same dispute, won
    checkout = payment_checkout(
        "cs_won", dispute["data"]["object"]["payment_intent"], customid="buyer-4", sku="lifetime"
    )
    checkout["created"] = dispute["created"] - 3600
    deliver(client, checkout, dispute)
    assert code(client, "buyer-4") == 3


def test_a_full_refund_revokes_a_purchase_and_a_partial_one_does_not(client) -> None:
    setup_catalogue(client)
    refunded = real("charge.refunded__sse__1.json")  # real: full refund of a charge
    charge = refunded["data"]["object"]
    for customid, partial in (("full", False), ("part", True)):
        event = copy.deepcopy(refunded)
        event["id"] += customid
        obj = event["data"]["object"]
        obj.update(customer=None, payment_intent=f"pi_{customid}", id=f"ch_{customid}")
        if partial:  # edited copy: half of the amount refunded
            obj.update(refunded=False, amount_refunded=charge["amount"] // 2)
        checkout = payment_checkout(
            f"cs_{customid}", f"pi_{customid}", customid=customid, sku="lifetime"
        )
        checkout["created"] = refunded["created"] - 60
        deliver(client, checkout, event)
    assert code(client, "full") == -8
    assert code(client, "part") == 3


def test_a_checkout_whose_products_are_unknown_is_an_unresolved_purchase(client) -> None:
    setup_catalogue(client)
    deliver(client, payment_checkout("cs_unknown", "pi_unknown", customid="buyer-5"))
    assert code(client, "buyer-5") == -9
    response = client.get("/v1/subscriber", params={"customid": "buyer-5"}, headers=AUTH)
    (purchase,) = response.json()["purchases"]
    assert (purchase["resolved"], purchase["checkoutSessionId"]) == (False, "cs_unknown")


# --- Linking app users to Stripe customers ----------------------------------------------------


def test_metadata_customid_links_a_customer_without_connect(client) -> None:
    setup_catalogue(client)
    event = real(ALI_UPDATED)
    event["data"]["object"]["metadata"] = {"customid": "ali-by-metadata"}
    deliver(client, event)
    assert code(client, "ali-by-metadata", at=1714549400) == 5


def test_events_before_the_link_count_once_linked(client) -> None:
    setup_catalogue(client)
    deliver(client, real(ALI_UPDATED), real(ALI_PAID))
    assert code(client, "ali", at=1714549400) == -9
    assert connect(client, "ali", ALI).json()["changed"] is True
    assert code(client, "ali", at=1714549400) == 5


def test_relinking_a_customer_transfers_its_grants(client) -> None:
    setup_catalogue(client)
    deliver(client, real(ALI_UPDATED))
    connect(client, "first", ALI)
    connect(client, "second", ALI)
    assert code(client, "first", at=1714549400) == -9
    assert code(client, "second", at=1714549400) == 5
    subscriber = client.get("/v1/subscriber", params={"customid": "second"}, headers=AUTH)
    claims = subscriber.json()["customers"][0]["claims"]
    assert [c["customid"] for c in claims if c["source"] == "connect_stripe"] == ["first", "second"]


def test_connecting_the_same_link_twice_changes_nothing(client) -> None:
    assert connect(client, "ali", ALI).json()["changed"] is True
    assert connect(client, "ali", ALI).json()["changed"] is False


def test_a_customid_may_own_several_stripe_customers(client) -> None:
    setup_catalogue(client)
    connect(client, "multi", ALI)
    connect(client, "multi", "cus_ST1RtHydC4cdb5")
    deliver(
        client,
        real(ALI_UPDATED),
        real("2023-10-16__invoice.payment_succeeded__mvpcourseforger__1.json"),
    )
    at = 1749474500
    perms = permissions(client, "multi", at=at)
    assert perms["course"]["entitlement"] == 5  # renewal heard through the paid invoice
    body = client.get("/v1/subscriber", params={"customid": "multi"}, headers=AUTH).json()
    assert sorted(c["customerId"] for c in body["customers"]) == sorted([ALI, "cus_ST1RtHydC4cdb5"])


def test_conflicting_customids_on_one_customer_are_surfaced(client) -> None:
    setup_catalogue(client)
    sub = real(ALI_UPDATED)
    sub["data"]["object"]["metadata"] = {"customid": "alice"}
    invoice = real(ALI_PAID)
    invoice["data"]["object"]["metadata"] = {"customid": "mallory"}
    deliver(client, sub, invoice)
    body = client.get("/v1/subscriber", params={"customid": "alice"}, headers=AUTH).json()
    assert [(c["customid"], c["customerId"]) for c in body["conflicts"]] == [("mallory", ALI)]
    assert code(client, "mallory", at=1714549400) == -9  # never silently granted to both


def test_subscriber_lists_customers_subscriptions_and_permissions(client) -> None:
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_CREATED), real(ALI_PAID), real(ALI_UPDATED))
    body = client.get("/v1/subscriber", params={"customid": "ali"}, headers=AUTH).json()
    assert body["subscriberId"] == "ali"
    assert [c["customerId"] for c in body["customers"]] == [ALI]
    (subscription,) = body["subscriptions"]
    assert subscription["subscriptionId"] == "sub_1PBXo5RxqlZt79sD3kdxoDVi"
    assert (subscription["status"], subscription["skuIds"]) == ("active", ["ali_monthly"])
    assert {p["permissionId"] for p in body["permissions"]} == {"premium", "course"}


# --- Keys, tenants, bad input -----------------------------------------------------------------


def test_a_missing_or_wrong_key_is_refused(client) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = client.get("/v1/permissions", params={"customid": "x"}, headers=headers)
        assert response.status_code == 401
        assert response.json() == {
            "status": 401,
            "error": {"code": 1202, "description": "Invalid APIKEY"},
        }


def test_a_missing_customid_is_an_invalid_parameter(client) -> None:
    for route in ("/v1/permissions", "/v1/subscriber"):
        response = client.get(route, headers=AUTH)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == 1010


def test_an_unknown_customid_has_every_permission_never_bought(client) -> None:
    setup_catalogue(client)
    perms = permissions(client, "nobody")
    assert {p: v["entitlement"] for p, v in perms.items()} == {"premium": -9, "course": -9}
    response = client.get("/v1/subscriber", params={"customid": "nobody"}, headers=AUTH)
    assert (response.status_code, response.json()["error"]["code"]) == (404, 1001)


def test_an_apps_key_never_reads_another_apps_data(client) -> None:
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_UPDATED))
    client.put("/v1/catalogue", json=CATALOGUE, headers=OTHER_AUTH)
    other = client.get(
        "/v1/permissions", params={"customid": "ali", "at": "1714549400"}, headers=OTHER_AUTH
    ).json()
    assert {p["permissionId"]: p["entitlement"] for p in other["all"]} == {
        "premium": -9,
        "course": -9,
    }
    response = client.get("/v1/subscriber", params={"customid": "ali"}, headers=OTHER_AUTH)
    assert response.status_code == 404
    # Linking with the other app's key touches only the other app.
    connect(client, "intruder", ALI, auth=OTHER_AUTH)
    assert code(client, "ali", at=1714549400) == 5
    assert code(client, "intruder", at=1714549400) == -9


def test_a_bad_connect_body_is_refused(client) -> None:
    for body in (
        {"customid": "x"},
        {"customerid": "cus_1"},
        {"customid": "x", "customerid": "sub_1"},
    ):
        response = client.post("/v1/connect_stripe", json=body, headers=AUTH)
        assert (response.status_code, response.json()["error"]["code"]) == (400, 1010)


# --- The catalogue ----------------------------------------------------------------------------


def test_the_catalogue_is_read_back_as_written(client) -> None:
    setup_catalogue(client)
    assert client.get("/v1/catalogue", headers=AUTH).json() == CATALOGUE
    assert client.get("/v1/catalogue", headers=OTHER_AUTH).json() == {"skus": [], "permissions": []}


def test_a_malformed_catalogue_is_refused_and_changes_nothing(client) -> None:
    setup_catalogue(client)
    bad_documents: list[Any] = [
        [1, 2],
        {"skus": [{"skuId": "a"}]},  # no productId
        {"skus": [], "permissions": [{"permissionId": "p", "skuIds": ["missing"]}]},
        {"skus": [{"skuId": "a", "productId": "p", "duration": "thirty days"}]},
        {"skus": [{"skuId": "a", "productId": "p"}, {"skuId": "a", "productId": "q"}]},
    ]
    for doc in bad_documents:
        response = client.put("/v1/catalogue", json=doc, headers=AUTH)
        assert (response.status_code, response.json()["error"]["code"]) == (400, 1010), doc
    response = client.put("/v1/catalogue", content=b"{not json", headers=AUTH)
    assert response.status_code == 400
    assert client.get("/v1/catalogue", headers=AUTH).json() == CATALOGUE


def test_a_catalogue_change_re_derives_permissions(client) -> None:
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_UPDATED))
    assert code(client, "ali", at=1714549400, permission="course") == -9
    moved = copy.deepcopy(CATALOGUE)
    moved["permissions"][1]["skuIds"].append("ali_monthly")
    setup_catalogue(client, moved)
    assert code(client, "ali", at=1714549400, permission="course") == 5


def test_permissions_at_parses_iso_times(client) -> None:
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_UPDATED))
    premium = permissions(client, "ali", at="2024-05-01T08:00:00Z")["premium"]
    assert premium["entitlement"] == 5
    response = client.get("/v1/permissions", params={"customid": "ali", "at": "soon"}, headers=AUTH)
    assert (response.status_code, response.json()["error"]["code"]) == (400, 1010)
