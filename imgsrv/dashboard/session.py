"""Dashboard access: the admin key by HTTP Basic or a login form, and CSRF tokens.

Sessions and tokens are stateless HMACs under a secret derived from the admin key, so every
instance behind a balancer accepts them without sharing anything, and changing the admin key
ends every session. The session cookie is HttpOnly and SameSite=Strict (Secure over HTTPS);
every action (a POST) must also carry a CSRF token bound to the session (or to Basic
authentication), which a page of another site cannot read or make.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time

from starlette.requests import Request

COOKIE = "imgsrv_session"
LIFETIME = 12 * 3600
BASIC = "basic"


def _secret(admin_key: str) -> bytes:
    return hmac.new(admin_key.encode(), b"imgsrv dashboard", hashlib.sha256).digest()


def _mac(admin_key: str, text: str) -> str:
    return hmac.new(_secret(admin_key), text.encode(), hashlib.sha256).hexdigest()


def new_session(admin_key: str, now: float | None = None) -> str:
    """A session cookie value: issue time, a nonce, and their MAC."""
    issued = int(now if now is not None else time.time())
    nonce = secrets.token_hex(8)
    return f"{issued}.{nonce}.{_mac(admin_key, f'session|{issued}.{nonce}')}"


def _fresh(issued: str, now: float) -> bool:
    return issued.isdigit() and 0 <= now - int(issued) <= LIFETIME


def session_binding(request: Request, admin_key: str) -> str | None:
    """What the request is authenticated by (a session nonce, or ``basic``), or None."""
    if not admin_key:
        return None
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        password = decoded.partition(":")[2]
        return BASIC if hmac.compare_digest(password.encode(), admin_key.encode()) else None
    cookie = request.cookies.get(COOKIE, "")
    parts = cookie.split(".")
    if len(parts) != 3 or not _fresh(parts[0], time.time()):
        return None
    expected = _mac(admin_key, f"session|{parts[0]}.{parts[1]}")
    return parts[1] if hmac.compare_digest(parts[2], expected) else None


def csrf_token(admin_key: str, binding: str, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    return f"{issued}.{_mac(admin_key, f'csrf|{binding}|{issued}')}"


def valid_csrf(admin_key: str, binding: str, token: str) -> bool:
    issued, _, mac = token.partition(".")
    if not _fresh(issued, time.time()):
        return False
    return hmac.compare_digest(mac, _mac(admin_key, f"csrf|{binding}|{issued}"))


def valid_key(admin_key: str, presented: str) -> bool:
    return bool(admin_key) and hmac.compare_digest(presented.encode(), admin_key.encode())
