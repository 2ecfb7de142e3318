"""The dashboard's guards: who may look (auth), who may act (CSRF), and read-only mode.

``auth`` is one string, chosen by its prefix:

- ``"user:password"``: HTTP Basic; the browser asks once and resends it.
- ``"token:<secret>"``: a bearer token (``Authorization: Bearer <secret>``),
  or ``?token=<secret>`` once in a link, after which a cookie (HttpOnly,
  SameSite=Strict) carries a digest of it, so the secret is not left in the
  address bar or the logs of later requests.

Every state-changing request is a POST whose form carries the CSRF token that
the page was rendered with; the same value lives in a SameSite=Strict cookie
(double submit), compared in constant time. Another site can neither read the
cookie nor make the browser send it, so it cannot forge the pair. Read-only
mode refuses every method but GET and HEAD.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, parse_qsl

from starlette.requests import Request, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamq.errors import ConfigError

CSRF_COOKIE = "streamq_csrf"
CSRF_FIELD = "csrf"
TOKEN_COOKIE = "streamq_token"
_SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Auth:
    kind: Literal["basic", "token"]
    user: str
    secret: str

    @classmethod
    def parse(cls, text: str) -> Auth:
        """``user:password`` or ``token:<secret>``; ConfigError for anything else."""
        user, sep, secret = text.partition(":")
        if not sep or not user or not secret:
            raise ConfigError(
                "auth must be 'user:password' (HTTP Basic) or 'token:<secret>' (a bearer token)"
            )
        return cls("token" if user == "token" else "basic", user, secret)

    @property
    def cookie_value(self) -> str:
        """What the token cookie holds: a digest, never the secret itself."""
        return hashlib.sha256(b"streamq-dashboard:" + self.secret.encode()).hexdigest()

    def check_basic(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        user, _, password = given.partition(":")
        # Both compared, always: the time taken says nothing about which one was wrong.
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_password = hmac.compare_digest(password.encode(), self.secret.encode())
        return ok_user and ok_password

    def check_token(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.secret.encode())


def cookie_path(scope: Scope) -> str:
    """The dashboard's own path (its mount point), so its cookies go nowhere else."""
    return str(scope.get("root_path") or "") + "/"


def _cookies(scope: Scope) -> dict[str, str]:
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            return cookie_parser(value.decode("latin-1"))
    return {}


def _header(scope: Scope, wanted: bytes) -> str:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return str(value.decode("latin-1"))
    return ""


def _set_cookie(name: str, value: str, path: str) -> tuple[bytes, bytes]:
    return (
        b"set-cookie",
        f"{name}={value}; Path={path}; HttpOnly; SameSite=Strict".encode("latin-1"),
    )


class SecurityMiddleware:
    """Auth, read-only mode and the CSRF cookie, before any route runs.

    Sets ``scope["state"]["csrf"]`` to the token forms carry (issuing the
    cookie on the response when the browser had none).
    """

    def __init__(self, app: ASGIApp, *, auth: Auth | None, read_only: bool) -> None:
        self.app = app
        self.auth = auth
        self.read_only = read_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies = _cookies(scope)
        extra: list[tuple[bytes, bytes]] = []
        path = cookie_path(scope)
        if self.auth is not None:
            verdict = self._authenticate(scope, cookies)
            if verdict is None:
                await _refuse(send, 401, "authentication required", self.auth)
                return
            if verdict:
                extra.append(_set_cookie(TOKEN_COOKIE, self.auth.cookie_value, path))
        if self.read_only and scope["method"] not in _SAFE_METHODS:
            await _refuse(send, 403, "read-only dashboard: no changes allowed", None)
            return
        csrf = cookies.get(CSRF_COOKIE, "")
        if len(csrf) < 32:
            csrf = secrets.token_urlsafe(32)
            extra.append(_set_cookie(CSRF_COOKIE, csrf, path))
        scope.setdefault("state", {})["csrf"] = csrf
        scope["state"]["csrf_from_cookie"] = CSRF_COOKIE in cookies

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cookies)

    def _authenticate(self, scope: Scope, cookies: dict[str, str]) -> bool | None:
        """None: refused; True: accepted by ``?token=`` (set the cookie); False: accepted."""
        auth = self.auth
        assert auth is not None
        header = _header(scope, b"authorization")
        if auth.kind == "basic":
            return False if auth.check_basic(header) else None
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and auth.check_token(given.strip()):
            return False
        cookie = cookies.get(TOKEN_COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), auth.cookie_value.encode()):
            return False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = (query.get("token") or [""])[0]
        if token and auth.check_token(token):
            return True
        return None


async def _refuse(send: Send, status: int, text: str, auth: Auth | None) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if auth is not None and auth.kind == "basic":
        headers.append((b"www-authenticate", b'Basic realm="streamq dashboard"'))
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class CsrfRefused(Exception):
    """A POST without the page's CSRF token (answered 403)."""


MAX_FORM_BYTES = 65_536


async def checked_form(request: Request) -> dict[str, str]:
    """The POST's form, once its CSRF field matches the cookie (constant time); else CsrfRefused.

    The dashboard's forms are URL-encoded (no uploads), read here with the
    standard library rather than with a multipart parser dependency.
    """
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise CsrfRefused()
    try:
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        raise CsrfRefused() from None
    given = form.get(CSRF_FIELD, "")
    expected = request.state.csrf if request.state.csrf_from_cookie else ""
    if not given or not expected:
        raise CsrfRefused()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfRefused()
    return form
