"""Per-app rules that tune entitlement codes (from the app's configuration)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RefundPolicy = Literal["full", "any", "never"]


@dataclass(frozen=True)
class AppPolicy:
    grace_period: int = 3 * 86400  # seconds; 0 disables grace
    renewal_leeway: int = 86400  # seconds a renewal may arrive after a period end
    refund_policy: RefundPolicy = "full"  # which refunds revoke: full only, any, or never
    pause_enabled: bool = False  # report paused subscriptions as -10 (else 0)
