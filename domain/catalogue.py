"""The catalogue: which Stripe products (SKUs) grant which permissions.

Held per app as events (see `domain/aggregates.py`); this module is its pure value and validation.
JSON shape (also accepted from TOML):
    {"skus": [{"skuId": "premium_monthly", "productId": "prod_ABC", "priceId": "price_1",
               "duration": "P30D"}],
     "permissions": [{"permissionId": "premium", "skuIds": ["premium_monthly"]}]}

A catalogue replaces the one before it and re-derives every customer, so a document that is not
plainly one is refused rather than read as an empty catalogue: both `skus` and `permissions` are
required (empty lists are a deliberate choice), no other top-level key is allowed, ids are
unique, every permission names known SKUs, and every SKU names a product or a price.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domain.durations import InvalidDuration, parse_duration


class InvalidCatalogue(ValueError):
    """The catalogue document is malformed; the message says where."""


@dataclass(frozen=True)
class Sku:
    sku_id: str
    product_id: str | None  # None: it names only a price
    price_id: str | None = None
    duration: str | None = None  # ISO 8601; for one-time purchases only

    def matches(self, product_id: str | None, price_id: str | None) -> bool:
        """A SKU matches by price id when it names one, else by product id."""
        if self.price_id is not None:
            return price_id == self.price_id
        return product_id is not None and product_id == self.product_id

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"skuId": self.sku_id}
        if self.product_id is not None:
            out["productId"] = self.product_id
        if self.price_id is not None:
            out["priceId"] = self.price_id
        if self.duration is not None:
            out["duration"] = self.duration
        return out


@dataclass(frozen=True)
class Permission:
    permission_id: str
    sku_ids: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"permissionId": self.permission_id, "skuIds": list(self.sku_ids)}


@dataclass(frozen=True)
class Catalogue:
    skus: tuple[Sku, ...] = ()
    permissions: tuple[Permission, ...] = ()

    def sku(self, sku_id: str) -> Sku | None:
        return next((s for s in self.skus if s.sku_id == sku_id), None)

    def skus_for_line(self, product_id: str | None, price_id: str | None) -> list[Sku]:
        return [s for s in self.skus if s.matches(product_id, price_id)]

    def permissions_of_sku(self, sku_id: str) -> list[str]:
        return [p.permission_id for p in self.permissions if sku_id in p.sku_ids]

    def to_json(self) -> dict[str, Any]:
        return {
            "skus": [s.to_json() for s in self.skus],
            "permissions": [p.to_json() for p in self.permissions],
        }

    @classmethod
    def from_json(cls, doc: Any) -> Catalogue:
        if not isinstance(doc, dict):
            raise InvalidCatalogue("the catalogue must be an object with 'skus' and 'permissions'")
        unknown = sorted(str(key) for key in doc if key not in _TOP_LEVEL)
        if unknown:
            raise InvalidCatalogue(
                f"unknown keys {unknown}: a catalogue has 'skus' and 'permissions'"
            )
        missing = [key for key in _TOP_LEVEL if key not in doc]
        if missing:
            raise InvalidCatalogue(f"missing {missing}: a catalogue has 'skus' and 'permissions'")
        skus = tuple(_parse_sku(i, raw) for i, raw in enumerate(_list(doc, "skus")))
        sku_ids = [s.sku_id for s in skus]
        _no_duplicates(sku_ids, "skuId")
        perms = tuple(
            _parse_permission(i, raw, set(sku_ids))
            for i, raw in enumerate(_list(doc, "permissions"))
        )
        _no_duplicates([p.permission_id for p in perms], "permissionId")
        return cls(skus=skus, permissions=perms)


_TOP_LEVEL = ("skus", "permissions")


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc[key]
    if not isinstance(value, list):
        raise InvalidCatalogue(f"'{key}' must be a list")
    return value


def _text(raw: dict[str, Any], key: str, where: str, required: bool = True) -> str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidCatalogue(f"{where}: '{key}' must be a non-empty string")
    return _storable(value, f"{where}: '{key}'")


def _storable(value: str, what: str) -> str:
    """Ids are stored and compared as text on every backend: PostgreSQL refuses NUL, and a
    lone surrogate cannot be encoded as UTF-8 at all (a catalogue file may hold either)."""
    if "\x00" in value:
        raise InvalidCatalogue(f"{what} must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidCatalogue(f"{what} is not valid Unicode (a lone surrogate)") from error
    return value


def _parse_sku(index: int, raw: Any) -> Sku:
    where = f"skus[{index}]"
    if not isinstance(raw, dict):
        raise InvalidCatalogue(f"{where} must be an object")
    duration = _text(raw, "duration", where, required=False)
    if duration is not None:
        try:
            parse_duration(duration)
        except InvalidDuration as error:
            raise InvalidCatalogue(f"{where}: {error}") from error
    product_id = _text(raw, "productId", where, required=False)
    price_id = _text(raw, "priceId", where, required=False)
    if product_id is None and price_id is None:
        raise InvalidCatalogue(f"{where}: a SKU names a 'productId' or a 'priceId'")
    return Sku(
        sku_id=_text(raw, "skuId", where),  # type: ignore[arg-type]
        product_id=product_id,
        price_id=price_id,
        duration=duration,
    )


def _parse_permission(index: int, raw: Any, known_skus: set[str]) -> Permission:
    where = f"permissions[{index}]"
    if not isinstance(raw, dict):
        raise InvalidCatalogue(f"{where} must be an object")
    permission_id = _text(raw, "permissionId", where)
    sku_ids = raw.get("skuIds", [])
    if not isinstance(sku_ids, list) or not all(isinstance(s, str) for s in sku_ids):
        raise InvalidCatalogue(f"{where}: 'skuIds' must be a list of strings")
    for sku_id in sku_ids:
        _storable(sku_id, f"{where}: 'skuIds'")
    unknown = [s for s in sku_ids if s not in known_skus]
    if unknown:
        raise InvalidCatalogue(f"{where}: unknown skuIds {unknown}")
    return Permission(permission_id=permission_id, sku_ids=tuple(sku_ids))  # type: ignore[arg-type]


def _no_duplicates(ids: list[str], name: str) -> None:
    seen: set[str] = set()
    for value in ids:
        if value in seen:
            raise InvalidCatalogue(f"duplicate {name} {value!r}")
        seen.add(value)
