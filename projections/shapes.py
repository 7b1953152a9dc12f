"""The answers' JSON shapes: Glassfy's permission shape plus our extensions.

The grants read model keeps answers in these shapes (`projections/grants.py`); queries about
another instant render them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domain.facts import LineItem
from domain.outcomes import Derivation, PermissionStatus, Purchase, SkuGrant, SubscriptionState
from projections.buyer_facts import Claim

STRIPE_STORE = 4


@dataclass(frozen=True)
class LinkedCustomer:
    buyer_key: str
    claims: tuple[Claim, ...]
    conflicts: tuple[Claim, ...]


@dataclass(frozen=True)
class Subscriber:
    customid: str
    customers: tuple[LinkedCustomer, ...]
    derivation: Derivation


def permissions_json(
    customid: str, permissions: tuple[PermissionStatus, ...], explain: bool = False
) -> dict[str, Any]:
    return {"subscriberId": customid, "all": [permission_json(p, explain) for p in permissions]}


def permission_json(permission: PermissionStatus, explain: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "permissionId": permission.permission_id,
        "entitlement": permission.entitlement,
        "isValid": permission.is_valid,
        "expireDate": permission.expire_date,
        "accountableSkus": [accountable_sku_json(g) for g in permission.accountable_skus],
    }
    if explain:
        out["explain"] = {
            "rule": permission.rule,
            "eventIds": list(permission.event_ids),
            "grants": [grant_json(g) for g in permission.accountable_skus],
        }
    return out


def accountable_sku_json(grant: SkuGrant) -> dict[str, Any]:
    return {
        "skuId": grant.sku_id,
        "productId": grant.product_id,
        "store": STRIPE_STORE,
        "isInIntroOfferPeriod": grant.is_intro,
        "isInTrialPeriod": grant.is_trial,
    }


def grant_json(grant: SkuGrant) -> dict[str, Any]:
    return {
        "skuId": grant.sku_id,
        "sourceId": grant.source_id,
        "entitlement": grant.entitlement,
        "expireDate": grant.expire_date,
        "rule": grant.rule,
        "eventIds": list(grant.event_ids),
    }


def subscriber_json(subscriber: Subscriber) -> dict[str, Any]:
    derivation = subscriber.derivation
    return {
        "subscriberId": subscriber.customid,
        "customers": [customer_json(c) for c in subscriber.customers],
        "subscriptions": [subscription_json(s) for s in derivation.subscriptions],
        "purchases": [purchase_json(p) for p in derivation.purchases],
        "permissions": [permission_json(p) for p in derivation.permissions],
        "conflicts": [
            {"customerId": c.buyer_key, **claim_json(claim)}
            for c in subscriber.customers
            for claim in c.conflicts
        ],
    }


def customer_json(customer: LinkedCustomer) -> dict[str, Any]:
    key = customer.buyer_key
    return {
        "customerId": key if key.startswith("cus_") else None,
        "buyerKey": key,
        "claims": [claim_json(c) for c in customer.claims],
    }


def claim_json(claim: Claim) -> dict[str, Any]:
    return {"customid": claim.customid, "source": claim.source, "eventId": claim.event_id or None}


def subscription_json(sub: SubscriptionState) -> dict[str, Any]:
    return {
        "subscriptionId": sub.subscription_id,
        "customerId": sub.customer_id,
        "status": sub.status,
        "skuIds": list(sub.sku_ids),
        "formerSkuIds": list(sub.former_sku_ids),
        "items": [line_json(i) for i in sub.items],
        "currentPeriodStart": sub.current_period_start,
        "currentPeriodEnd": sub.current_period_end,
        "cancelAtPeriodEnd": sub.cancel_at_period_end,
        "cancelAt": sub.cancel_at,
        "canceledAt": sub.canceled_at,
        "endedAt": sub.ended_at,
        "isInTrialPeriod": sub.is_trial,
        "entitlement": sub.entitlement,
        "expireDate": sub.expire_date,
        "rule": sub.rule,
    }


def purchase_json(purchase: Purchase) -> dict[str, Any]:
    return {
        "purchaseId": purchase.purchase_id,
        "customerId": purchase.customer_id,
        "checkoutSessionId": purchase.session_id,
        "paymentIntentId": purchase.payment_intent_id,
        "skuIds": list(purchase.sku_ids) if purchase.sku_ids is not None else None,
        "resolved": not purchase.unresolved,
        "paidAt": purchase.paid_at,
        "expireDate": purchase.expire_date,
        "refunded": purchase.refunded,
        "entitlement": purchase.entitlement,
        "rule": purchase.rule,
        "resolutionError": purchase.resolution_error,  # why Stripe will not give its products
    }


def line_json(line: LineItem) -> dict[str, Any]:
    return {"productId": line.product_id, "priceId": line.price_id, "quantity": line.quantity}
