"""Configuration: a TOML file of apps, secrets, keys and the database.

Any string value written as "env:NAME" is read from the environment variable NAME, so secrets
need not sit in the file. `ENTITLEMENTS_DATABASE_URL` overrides `[database] url`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.roles import ADMIN, ROLES
from domain.durations import InvalidDuration, duration_seconds
from domain.policy import AppPolicy

DEMO_CONFIG = Path(__file__).with_name("demo.toml")
DEFAULT_DATABASE_URL = "sqlite:///var/entitlements.sqlite"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


def api_key_digest(key: str) -> bytes:
    """What is kept of a REST API key: its SHA-256."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class Endpoint:
    """Where an app is told of its customers' permission changes (outbound webhooks)."""

    url: str
    secret: str  # signs each delivery (`Entitlements-Signature`)

    def __repr__(self) -> str:  # never print secrets
        return f"Endpoint(url={self.url!r})"


@dataclass(frozen=True)
class ApiKey:
    """A REST API key as kept: its SHA-256 digest (plain keys are hashed on load) and role."""

    digest: bytes
    role: str = ADMIN

    def __repr__(self) -> str:  # never print secrets, not even digests
        return f"ApiKey(role={self.role!r})"


@dataclass(frozen=True)
class AppConfig:
    app_id: str
    webhook_secrets: tuple[str, ...]
    rest_api_keys: tuple[ApiKey, ...]
    policy: AppPolicy = field(default_factory=AppPolicy)
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    catalogue_file: Path | None = None
    stripe_max_requests_per_second: float = 20.0  # Stripe's test mode allows 25
    reconcile_every: float = 0.0  # seconds between reconciles inside `serve`; 0 disables
    endpoints: tuple[Endpoint, ...] = ()  # [[apps.X.endpoints]]: outbound webhooks

    @property
    def rest_api_key_digests(self) -> tuple[bytes, ...]:
        return tuple(key.digest for key in self.rest_api_keys)

    def role_of_key_digest(self, digest: bytes) -> str | None:
        """The role of the key with this digest, else None. Every configured digest is
        compared in constant time (no early exit), so timing says nothing of which matched."""
        roles = [k.role for k in self.rest_api_keys if hmac.compare_digest(digest, k.digest)]
        return roles[0] if roles else None

    def accepts_key_digest(self, digest: bytes) -> bool:
        return self.role_of_key_digest(digest) is not None

    def __repr__(self) -> str:  # never print secrets
        return f"AppConfig(app_id={self.app_id!r})"


@dataclass(frozen=True)
class ServerLimits:
    """Per-process protections (see adapters/http/limits.py); 0 disables a limit."""

    rate_limit_per_second: float = 100.0  # REST calls, per app key
    rate_limit_burst: int = 200
    webhook_rate_limit_per_second: float = 0.0  # verified webhooks, per app: none by default
    webhook_rate_limit_burst: int = 1000
    request_timeout: float = 30.0  # seconds before a request is answered 503
    max_requests_in_progress: int = 128  # REST requests, past which new ones are answered 503
    keep_alive_timeout: int = 5  # seconds an idle keep-alive connection stays open
    # A webhook not recorded by then is answered 503 with Retry-After (Stripe retries): while
    # the database is away, senders hear so at once and their bodies are not kept waiting.
    webhook_write_timeout: float = 2.0
    # Connections that never finish their headers (slowloris) would otherwise stay open until
    # the process runs out of descriptors: adapters/http/connections.py closes them.
    header_timeout: float = 10.0  # seconds to receive a request's headers
    max_connections: int = 0  # open at once in a worker; 0: what its descriptor limit allows
    max_connections_per_address: int = 256  # open at once from one client address


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    # Queries' reads of the read models from a hot standby (`serve` only); None: the primary.
    read_url: str | None = None
    apps: dict[str, AppConfig] = field(default_factory=dict)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # Where `serve` applies events to the read models: "process" (`entitlements project`,
    # started beside each worker: adapters/process/projector.py) or "thread" (in the worker itself).
    projector: str = "process"
    signature_tolerance: int = 300  # seconds, as Stripe's libraries
    limits: ServerLimits = field(default_factory=ServerLimits)


def load_settings(
    path: str | Path | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read the file named by `path`, else `ENTITLEMENTS_CONFIG`, else the demo configuration."""
    env = os.environ if environ is None else environ
    chosen = Path(path or env.get("ENTITLEMENTS_CONFIG") or DEMO_CONFIG)
    try:
        with chosen.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError as error:
        raise ConfigError(f"configuration file not found: {chosen}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{chosen}: invalid TOML: {error}") from error
    return settings_from_dict(doc, env, base_dir=chosen.parent)


def settings_from_dict(doc: dict[str, Any], env: Any, base_dir: Path = Path()) -> Settings:
    doc = _resolve_env(doc, env)
    database = doc.get("database", {})
    server = doc.get("server", {})
    apps = {
        app_id: _app_config(app_id, raw, base_dir) for app_id, raw in _table(doc, "apps").items()
    }
    if not apps:
        raise ConfigError("no apps configured: add an [apps.<id>] table")
    return Settings(
        database_url=env.get("ENTITLEMENTS_DATABASE_URL")
        or database.get("url")
        or DEFAULT_DATABASE_URL,
        read_url=_read_url(env.get("ENTITLEMENTS_READ_DATABASE_URL") or database.get("read_url")),
        apps=apps,
        max_body_bytes=_int(server, "max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        host=server.get("host", "127.0.0.1"),
        port=_int(server, "port", 8000),
        workers=_int(server, "workers", 1),
        projector=_projector(server),
        limits=_limits(server),
    )


PROJECTORS = ("process", "thread")


def _read_url(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError("database.read_url must be a PostgreSQL URL (a hot standby)")
    return value


def _projector(server: dict[str, Any]) -> str:
    value = server.get("projector", "process")
    if value not in PROJECTORS:
        raise ConfigError(f"server.projector must be one of {', '.join(PROJECTORS)}")
    return value


def _limits(server: dict[str, Any]) -> ServerLimits:
    defaults = ServerLimits()
    return ServerLimits(
        **{
            name: _non_negative(server, name, getattr(defaults, name))
            for name in ServerLimits.__dataclass_fields__
        }
    )


def _non_negative(raw: dict[str, Any], key: str, default: float) -> Any:
    value = raw.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"server.{key} must be a number >= 0 (0 disables it)")
    return value


def _app_config(app_id: str, raw: Any, base_dir: Path) -> AppConfig:
    where = f"apps.{app_id}"
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table")
    secrets = _strings(raw, "webhook_secrets", where)
    if not secrets:
        raise ConfigError(f"{where}.webhook_secrets: at least one signing secret is needed")
    catalogue = raw.get("catalogue")
    return AppConfig(
        app_id=app_id,
        webhook_secrets=tuple(secrets),
        rest_api_keys=_api_keys(raw, where),
        policy=_policy(raw, where),
        stripe_api_key=raw.get("stripe_api_key"),
        stripe_api_base=raw.get("stripe_api_base"),
        catalogue_file=(base_dir / catalogue) if isinstance(catalogue, str) else None,
        stripe_max_requests_per_second=_positive(raw, "stripe_max_requests_per_second", where),
        reconcile_every=_every(raw, "reconcile_every", where),
        endpoints=_endpoints(raw, where),
    )


def _endpoints(raw: dict[str, Any], where: str) -> tuple[Endpoint, ...]:
    """`[[apps.X.endpoints]]`: each a `url` (http or https) and a `secret`."""
    tables = raw.get("endpoints", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}.endpoints must be an array of tables ([[{where}.endpoints]])")
    endpoints = []
    for index, table in enumerate(tables):
        url, secret = table.get("url"), table.get("secret")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.endpoints[{index}].url must be an http(s) URL")
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{where}.endpoints[{index}].secret must be a non-empty string")
        endpoints.append(Endpoint(url, secret))
    if len({e.url for e in endpoints}) != len(endpoints):
        raise ConfigError(f"{where}.endpoints: each url may be listed once")
    return tuple(endpoints)


def _positive(raw: dict[str, Any], key: str, where: str, default: float = 20.0) -> float:
    value = raw.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}.{key} must be a number > 0")
    return float(value)


def _every(raw: dict[str, Any], key: str, where: str) -> float:
    """An ISO 8601 duration in seconds ("PT0S", the default, disables what it times)."""
    try:
        return float(duration_seconds(raw.get(key, "PT0S")))
    except InvalidDuration as error:
        raise ConfigError(f"{where}.{key}: {error}") from error


def _policy(raw: dict[str, Any], where: str) -> AppPolicy:
    refund_policy = raw.get("refund_policy", "full")
    if refund_policy not in ("full", "any", "never"):
        raise ConfigError(f"{where}.refund_policy must be one of full, any, never")
    try:
        return AppPolicy(
            grace_period=duration_seconds(raw.get("grace_period", "P3D")),
            renewal_leeway=duration_seconds(raw.get("renewal_leeway", "P1D")),
            refund_policy=refund_policy,
            pause_enabled=bool(raw.get("pause_enabled", False)),
        )
    except InvalidDuration as error:
        raise ConfigError(f"{where}: {error}") from error


def _api_keys(raw: dict[str, Any], where: str) -> tuple[ApiKey, ...]:
    """`rest_api_keys`: each entry a key (role admin) or a table `{ key = "...", role = "..." }`."""
    entries = raw.get("rest_api_keys", [])
    if isinstance(entries, str | dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise ConfigError(f"{where}.rest_api_keys must be a list of keys or {{ key, role }} tables")
    return tuple(_api_key(entry, f"{where}.rest_api_keys[{n}]") for n, entry in enumerate(entries))


def _api_key(entry: Any, where: str) -> ApiKey:
    if isinstance(entry, str) and entry:
        return ApiKey(_key_digest(entry, where))
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a non-empty string or a {{ key, role }} table")
    unknown = sorted(set(entry) - {"key", "role"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (a key table has key and role)")
    key, role = entry.get("key"), entry.get("role")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}.key must be a non-empty string")
    if role not in ROLES:  # required: a table left without one must not default to admin
        raise ConfigError(f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})")
    return ApiKey(_key_digest(key, where), role)


def _key_digest(key: str, where: str) -> bytes:
    if key.startswith("sha256:"):
        try:
            digest = bytes.fromhex(key.removeprefix("sha256:"))
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ConfigError(f"{where}: a sha256: key needs 64 hex digits")
        return digest
    return api_key_digest(key)


def _resolve_env(value: Any, env: Any) -> Any:
    """Replace every "env:NAME" string by the value of environment variable NAME."""
    if isinstance(value, dict):
        return {k: _resolve_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, env) for v in value]
    if isinstance(value, str) and value.startswith("env:"):
        name = value.removeprefix("env:")
        if name not in env:
            raise ConfigError(f"environment variable {name} is not set")
        return env[name]
    return value


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table")
    return value


def _strings(raw: dict[str, Any], key: str, where: str) -> list[str]:
    value = raw.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key} must be a list of non-empty strings")
    return value


def _int(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer")
    return value
