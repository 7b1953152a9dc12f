"""Console sessions: a signed cookie naming the app and the key signed in with, and CSRF tokens.

The cookie holds no key, only an HMAC of its digest, so removing the key from the configuration
ends its sessions. The signing secret is derived from the configuration's secrets (webhook
secrets and key digests), so every worker and host sharing one configuration accepts the same
cookies with nothing more to configure; changing those secrets signs everybody out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from adapters.config import AppConfig, Settings, api_key_digest
from adapters.http.route_roles import CONSOLE_ROLE
from adapters.roles import allows

COOKIE = "console_session"
SIGN_IN_COOKIE = "console_sign_in"  # the sign-in form's CSRF nonce (no session exists yet)
LIFETIME = 8 * 3600  # seconds: a working day


@dataclass(frozen=True)
class ConsoleSession:
    app_id: str
    role: str
    nonce: str  # random per sign-in: what its CSRF token is made from


def session_secret(settings: Settings) -> bytes:
    material = hashlib.sha256(b"entitlements console session v1")
    for app in sorted(settings.apps.values(), key=lambda a: a.app_id):
        material.update(app.app_id.encode() + b"\0")
        for secret in app.webhook_secrets:
            material.update(secret.encode() + b"\0")
        for key in app.rest_api_keys:
            material.update(key.digest)
    return material.digest()


def _mac(secret: bytes, purpose: str, value: str | bytes) -> str:
    data = value.encode() if isinstance(value, str) else value
    return hmac.new(secret, purpose.encode() + b":" + data, hashlib.sha256).hexdigest()


def sign_in(
    secret: bytes, apps: dict[str, AppConfig], key: str
) -> tuple[ConsoleSession, str] | None:
    """The session and its cookie value for a key that may open the console; None for a key
    no app has. Raises `ReadOnlyKey` for a key whose role is below audit."""
    digest = api_key_digest(key)
    found = [(app, app.role_of_key_digest(digest)) for app in apps.values()]
    matches = [(app, role) for app, role in found if role is not None]
    if len(matches) != 1:
        return None
    app, role = matches[0]
    if not allows(role, CONSOLE_ROLE):
        raise ReadOnlyKey(role)
    session = ConsoleSession(app.app_id, role, secrets.token_urlsafe(16))
    payload = {
        "a": app.app_id,
        "k": _mac(secret, "key", digest),
        "n": session.nonce,
        "e": int(time.time()) + LIFETIME,
    }
    # Unpadded: an "=" would make the cookie value a quoted string.
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    return session, f"{body}.{_mac(secret, 'cookie', body)}"


class ReadOnlyKey(Exception):
    """A key whose role may not open the console (read keys: an app backend's)."""


def session_of(
    secret: bytes, apps: dict[str, AppConfig], cookie: str | None
) -> ConsoleSession | None:
    """The session a cookie proves, if it is ours, unexpired, and its key still configured
    with a role that may open the console (roles are read from the configuration now)."""
    if not cookie or "." not in cookie:
        return None
    body, mac = cookie.rsplit(".", 1)
    if not hmac.compare_digest(mac, _mac(secret, "cookie", body)):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        app = apps.get(payload["a"])
        if app is None or payload["e"] < time.time():
            return None
        roles = [k.role for k in app.rest_api_keys if _mac(secret, "key", k.digest) == payload["k"]]
    except (ValueError, KeyError, TypeError):
        return None
    if not roles or not allows(roles[0], CONSOLE_ROLE):
        return None
    return ConsoleSession(app.app_id, roles[0], str(payload["n"]))


def csrf_token(secret: bytes, nonce: str) -> str:
    return _mac(secret, "csrf", nonce)


def csrf_ok(secret: bytes, nonce: str | None, token: str | None) -> bool:
    if not nonce or not token:
        return False
    return hmac.compare_digest(csrf_token(secret, nonce), token)


def new_nonce() -> str:
    return secrets.token_urlsafe(16)
