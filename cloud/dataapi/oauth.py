"""OAuth 2 for the data API: Authlib's authorization server on Starlette, state in the cloud database.

Flows (RFC 6749): authorization code with PKCE S256 (RFC 7636, required for every app, public or
confidential) for apps a site owner signs in to; client credentials for the operator's services;
refresh-token rotation; revocation (RFC 7009). Access tokens expire (ACCESS_TTL_S), refresh
tokens too (REFRESH_TTL_S); both are stored only as SHA-256 digests.

Authlib's server is synchronous and our database is async: each OAuth request runs Authlib in a
worker thread (anyio.to_thread) whose storage callbacks hop back onto the event loop
(anyio.from_thread.run). The loop stays free while Authlib works.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import anyio.from_thread
import anyio.to_thread
import msgspec
import structlog
from authlib.oauth2 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749 import OAuth2Payload, grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from cloud.dataapi.access import ALL_SITES, SCOPES, digest
from cloud.dataapi.mount import WEB_CALLBACK
from cloud.dataapi.tables import oauth_clients, oauth_codes, oauth_tokens, owner_sites, owners
from cloud.db import Database, sites
from cloud.server.limits import Rate, TokenBuckets, retry_after

log = structlog.get_logger("zapcloud.oauth")

T = TypeVar("T")

ACCESS_TTL_ENV = "ZAPCLOUD_ACCESS_TOKEN_TTL_S"
ACCESS_TTL_S = 3600
REFRESH_TTL_S = 30 * 86400
CODE_TTL_S = 120
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
WEB_CLIENT_ID = "zapcloud-web"  # the cloud's own pages sign in through the same flow
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_MAX_FORM_BYTES = 16_384


def access_ttl_s(env: Mapping[str, str] | None = None) -> int:
    """The access-token lifetime; ZAPCLOUD_ACCESS_TOKEN_TTL_S overrides it (bounded 1 s .. 1 day)."""
    raw = (env if env is not None else os.environ).get(ACCESS_TTL_ENV, "")
    if not raw:
        return ACCESS_TTL_S
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{ACCESS_TTL_ENV}={raw!r}: not an integer") from None
    if not 1 <= value <= 86400:
        raise ValueError(f"{ACCESS_TTL_ENV}={value}: must be 1..86400 seconds")
    return value


# --- passwords ----------------------------------------------------------------------------


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    h = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${h.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, salt_hex, h_hex = stored.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if kind != "scrypt":
        return False
    h = hashlib.scrypt(password.encode()[:1024], salt=salt, n=2**14, r=8, p=1)
    return hmac.compare_digest(h.hex(), h_hex)


# --- Authlib models -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Client:
    """An OAuth client as Authlib's ClientMixin expects it."""

    client_id: str
    name: str
    secret_hash: str | None
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    scope: str
    sites: tuple[str, ...] = ()

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        allowed = set(self.scope.split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return self.secret_hash is not None and hmac.compare_digest(digest(client_secret), self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.secret_hash is None:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


# The web pages' own public client: a fixed redirect path on this server, read scopes only.
WEB_CLIENT = Client(
    client_id=WEB_CLIENT_ID,
    name="zapcloud web view",
    secret_hash=None,
    redirect_uris=(WEB_CALLBACK,),
    grant_types=("authorization_code", "refresh_token"),
    scope="site:read telemetry:read prices:read plans:read",
)


@dataclass(frozen=True, slots=True)
class Owner:
    """The signed-in resource owner, with the sites they chose to grant."""

    owner_id: str
    grant_sites: tuple[str, ...] = ()

    def get_user_id(self) -> str:
        return self.owner_id


@dataclass(frozen=True, slots=True)
class AuthCode:
    code_hash: str
    client_id: str
    owner_id: str
    redirect_uri: str
    scope: str
    sites: tuple[str, ...]
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass(frozen=True, slots=True)
class Token:
    access_hash: str
    client_id: str
    owner_id: str | None
    scope: str
    sites: tuple[str, ...]
    expires_at: datetime
    revoked: bool
    now: datetime = field(compare=False)

    def check_client(self, client: Client) -> bool:
        return hmac.compare_digest(client.client_id.encode(), self.client_id.encode())

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return max(0, int((self.expires_at - self.now).total_seconds()))

    def is_expired(self) -> bool:
        return self.expires_at <= self.now

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> Owner | None:
        return None if self.owner_id is None else Owner(self.owner_id, self.sites)

    def get_client(self) -> None:
        return None


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


# --- storage (async, on the loop) ------------------------------------------------------------


class OAuthStore:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    async def client(self, client_id: str) -> Client | None:
        if client_id == WEB_CLIENT_ID:
            return WEB_CLIENT
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(oauth_clients).where(oauth_clients.c.client_id == client_id))).first()
        if row is None:
            return None
        m = row._mapping
        return Client(
            client_id=m["client_id"],
            name=m["name"],
            secret_hash=m["secret_hash"],
            redirect_uris=tuple(m["redirect_uris"]),
            grant_types=tuple(m["grant_types"]),
            scope=m["scope"],
            sites=tuple(m["sites"]),
        )

    async def owner_sites(self, owner_id: str) -> list[str]:
        async with self.db.engine.connect() as conn:
            result = await conn.execute(
                select(owner_sites.c.site_id).where(owner_sites.c.owner_id == owner_id).order_by(owner_sites.c.site_id)
            )
            return [r[0] for r in result]

    async def sign_in(self, owner_id: str, password: str) -> Owner | None:
        async with self.db.engine.connect() as conn:
            stored = (await conn.execute(select(owners.c.password_hash).where(owners.c.owner_id == owner_id))).scalar()
        # Hash even for an unknown owner so the answer takes the same time.
        ok = await anyio.to_thread.run_sync(check_password, password, stored or hash_password("x"))
        return Owner(owner_id) if stored is not None and ok else None

    async def save_code(self, code: str, client_id: str, owner: Owner, data: Mapping[str, Any]) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                oauth_codes.insert().values(
                    code_hash=digest(code),
                    client_id=client_id,
                    owner_id=owner.owner_id,
                    redirect_uri=data.get("redirect_uri") or "",
                    scope=data.get("scope") or "",
                    sites=list(owner.grant_sites),
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                    expires_at=self.clock() + timedelta(seconds=CODE_TTL_S),
                )
            )

    async def code(self, code: str, client_id: str) -> AuthCode | None:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(oauth_codes).where(oauth_codes.c.code_hash == digest(code)))).first()
        if row is None:
            return None
        m = row._mapping
        if m["client_id"] != client_id or _utc(m["expires_at"]) <= self.clock():
            return None
        return AuthCode(
            code_hash=m["code_hash"],
            client_id=m["client_id"],
            owner_id=m["owner_id"],
            redirect_uri=m["redirect_uri"],
            scope=m["scope"],
            sites=tuple(m["sites"]),
            code_challenge=m["code_challenge"],
            code_challenge_method=m["code_challenge_method"],
        )

    async def delete_code(self, code_hash: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(delete(oauth_codes).where(oauth_codes.c.code_hash == code_hash))

    async def save_token(
        self, token: Mapping[str, Any], client_id: str, owner_id: str | None, sites_: tuple[str, ...]
    ) -> None:
        now = self.clock()
        refresh = token.get("refresh_token")
        async with self.db.engine.begin() as conn:
            await conn.execute(
                oauth_tokens.insert().values(
                    access_hash=digest(token["access_token"]),
                    refresh_hash=digest(refresh) if refresh else None,
                    client_id=client_id,
                    owner_id=owner_id,
                    scope=token.get("scope") or "",
                    sites=list(sites_),
                    issued_at=now,
                    expires_at=now + timedelta(seconds=int(token["expires_in"])),
                    refresh_expires_at=now + timedelta(seconds=REFRESH_TTL_S) if refresh else None,
                    revoked=False,
                )
            )

    def _token(self, m: Any) -> Token:
        return Token(
            access_hash=m["access_hash"],
            client_id=m["client_id"],
            owner_id=m["owner_id"],
            scope=m["scope"],
            sites=tuple(m["sites"]),
            expires_at=_utc(m["expires_at"]),
            revoked=bool(m["revoked"]),
            now=self.clock(),
        )

    async def by_refresh(self, refresh: str) -> Token | None:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(select(oauth_tokens).where(oauth_tokens.c.refresh_hash == digest(refresh)))
            ).first()
        if row is None or row._mapping["revoked"]:
            return None
        exp = row._mapping["refresh_expires_at"]
        if exp is None or _utc(exp) <= self.clock():
            return None
        return self._token(row._mapping)

    async def by_any(self, secret: str, hint: str | None) -> Token | None:
        h = digest(secret)
        cols = [oauth_tokens.c.access_hash, oauth_tokens.c.refresh_hash]
        if hint == "access_token":
            cols = cols[:1]
        elif hint == "refresh_token":
            cols = cols[1:]
        async with self.db.engine.connect() as conn:
            for col in cols:
                row = (await conn.execute(select(oauth_tokens).where(col == h))).first()
                if row is not None:
                    return self._token(row._mapping)
        return None

    async def revoke(self, access_hash: str) -> None:
        """Revoking either half revokes both: an app that signs out loses the refresh token too."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(oauth_tokens).where(oauth_tokens.c.access_hash == access_hash).values(revoked=True)
            )


def _on_loop(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """From Authlib's worker thread: run one storage coroutine on the event loop and wait for it."""
    return anyio.from_thread.run(fn, *args)


# --- Authlib grants and server ---------------------------------------------------------------


class _S256Only(CodeChallenge):
    SUPPORTED_CODE_CHALLENGE_METHOD = ("S256",)


class _CodeGrant(grants.AuthorizationCodeGrant):
    def _store(self) -> OAuthStore:
        store: OAuthStore = self.server.store
        return store

    TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")

    def validate_authorization_request(self) -> Any:
        redirect_uri = super().validate_authorization_request()
        data = self.request.payload.data
        # PKCE for every app, not only public ones, and only S256 (plain leaks the verifier).
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE required: code_challenge with code_challenge_method=S256")
        return redirect_uri

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = dict(request.payload.data)
        data["scope"] = request.scope
        _on_loop(self._store().save_code, code, request.client.client_id, request.user, data)

    def query_authorization_code(self, code: str, client: Client) -> AuthCode | None:
        return _on_loop(self._store().code, code, client.client_id)

    def delete_authorization_code(self, authorization_code: AuthCode) -> None:
        _on_loop(self._store().delete_code, authorization_code.code_hash)

    def authenticate_user(self, authorization_code: AuthCode) -> Owner:
        return Owner(authorization_code.owner_id, authorization_code.sites)


class _RefreshGrant(grants.RefreshTokenGrant):
    def _store(self) -> OAuthStore:
        store: OAuthStore = self.server.store
        return store

    TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: each refresh token works once

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        return _on_loop(self._store().by_refresh, refresh_token)

    def authenticate_user(self, refresh_token: Token) -> Owner | None:
        return refresh_token.get_user()

    def revoke_old_credential(self, refresh_token: Token) -> None:
        _on_loop(self._store().revoke, refresh_token.access_hash)


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post")


class _Revocation(RevocationEndpoint):
    def _store(self) -> OAuthStore:
        store: OAuthStore = self.server.store
        return store

    CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return _on_loop(self._store().by_any, token_string, token_type_hint)

    def revoke_token(self, token: Token, request: OAuth2Request) -> None:
        _on_loop(self._store().revoke, token.access_hash)


class _Payload(OAuth2Payload):
    def __init__(self, data: dict[str, str], datalist: dict[str, list[str]]) -> None:
        self._data = data
        self._datalist = datalist

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class FormRequest(OAuth2Request):
    """An already-read Starlette request, as Authlib's OAuth2Request."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        args: dict[str, str],
        form: dict[str, str],
        datalist: dict[str, list[str]],
    ) -> None:
        super().__init__(method=method, uri=uri, headers=headers)
        self._args = args
        self._form = form
        merged = {**args, **form}
        self.payload = _Payload(merged, datalist)

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class ZapAuthorizationServer(AuthorizationServer):
    def __init__(self, store: OAuthStore, *, access_ttl: int) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.store = store
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda *a, **k: secrets.token_urlsafe(32),
                refresh_token_generator=lambda *a, **k: secrets.token_urlsafe(32),
                expires_generator=lambda client, grant_type: access_ttl,
            ),
        )
        self.register_grant(_CodeGrant, [_S256Only(required=True)])
        self.register_grant(_RefreshGrant)
        self.register_grant(_ClientCredentialsGrant)
        self.register_endpoint(_Revocation)

    def query_client(self, client_id: str) -> Client | None:
        if not client_id or len(client_id) > 64:
            return None
        return _on_loop(self.store.client, client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        client: Client = request.client
        grant_type = request.payload.grant_type
        if grant_type == "authorization_code":
            code: AuthCode = request.authorization_code
            owner_id: str | None = code.owner_id
            granted = code.sites
        elif grant_type == "refresh_token":
            old: Token = request.refresh_token
            owner_id, granted = old.owner_id, old.sites
        else:  # client credentials: the sites the operator registered the service for
            owner_id, granted = None, client.sites
        _on_loop(self.store.save_token, token, client.client_id, owner_id, granted)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        hdrs = dict(headers or [])
        if isinstance(body, dict):
            hdrs.pop("Content-Type", None)
            return JSONResponse(body, status_code=status, headers=hdrs)
        return Response(body or b"", status_code=status, headers=hdrs)

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        assert isinstance(request, OAuth2Request)  # we always build ours before calling Authlib
        return request


async def _read(request: Request) -> FormRequest:
    """Read query and (bounded) form into an Authlib request, before entering Authlib's thread."""
    form: dict[str, str] = {}
    datalist: dict[str, list[str]] = {}
    for k, v in request.query_params.multi_items():
        datalist.setdefault(k, []).append(v)
    if request.method == "POST":
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit() or int(declared) > _MAX_FORM_BYTES:
            raise OAuthFormError("form body missing or larger than 16 KiB")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise OAuthFormError("OAuth requests are application/x-www-form-urlencoded")
        body = await request.body()
        if len(body) > _MAX_FORM_BYTES:
            raise OAuthFormError("form body larger than 16 KiB")
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=64, strict_parsing=False)
        except (UnicodeDecodeError, ValueError) as exc:
            raise OAuthFormError(f"bad form body: {exc}") from None
        for k, item in pairs:
            form.setdefault(k, item)
            datalist.setdefault(k, []).append(item)
    uri = str(request.url)
    # Behind a TLS proxy on this machine, the public scheme is what the proxy says.
    peer = request.client.host if request.client else ""
    if request.headers.get("x-forwarded-proto") == "https" and peer in ("127.0.0.1", "::1"):
        uri = "https" + uri[uri.index(":") :]
    args = dict(request.query_params)
    return FormRequest(request.method, uri, request.headers, args, form, datalist)  # case-insensitive, as HTTP


class OAuthFormError(Exception):
    """A request body that is not a small url-encoded form: answered 400 invalid_request before Authlib sees it."""


# --- Starlette endpoints ----------------------------------------------------------------------


SIGN_IN_PER_ACCOUNT = Rate(per_s=1 / 60, burst=5)  # 5 wrong passwords, then one try a minute
SIGN_IN_PER_ADDRESS = Rate(per_s=1 / 10, burst=20)  # 20 failures from one address, then one every 10 s


@dataclass(frozen=True, slots=True)
class SignInLimits:
    """Failed owner sign-ins a worker allows: per account name and per client address (token buckets).

    Only failures spend; a success costs nothing. Past the limit every attempt is refused (429 with
    Retry-After) without checking the password. Per worker, like the API's other rate limits: with N
    workers an address gets up to N times this.
    """

    account: Rate = SIGN_IN_PER_ACCOUNT
    address: Rate = SIGN_IN_PER_ADDRESS


@dataclass
class OAuthEndpoints:
    db: Database
    clock: Callable[[], datetime]
    require_admin: Callable[[Request], None]
    access_ttl: int = ACCESS_TTL_S
    # Counts a refusal by (endpoint, reason) in the worker's /metrics (Metrics.reject).
    count: Callable[[str, str], None] = lambda _endpoint, _reason: None
    sign_in_limits: SignInLimits = field(default_factory=lambda: SignInLimits())
    store: OAuthStore = field(init=False)
    server: ZapAuthorizationServer = field(init=False)
    by_account: TokenBuckets = field(init=False)
    by_address: TokenBuckets = field(init=False)

    def __post_init__(self) -> None:
        self.store = OAuthStore(self.db, self.clock)
        self.server = ZapAuthorizationServer(self.store, access_ttl=self.access_ttl)
        self.by_account = TokenBuckets(self.sign_in_limits.account)
        self.by_address = TokenBuckets(self.sign_in_limits.address)

    def _sign_in_wait(self, account: str, address: str) -> float:
        return max(self.by_account.spent(account), self.by_address.spent(address))

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn)

    async def authorize(self, request: Request) -> Response:
        """GET: the sign-in and consent page. POST: the owner's answer; redirects back to the app."""
        try:
            oreq = await _read(request)
        except OAuthFormError as exc:
            return JSONResponse({"error": "invalid_request", "error_description": str(exc)}, status_code=400)
        try:
            grant = await self._in_thread(lambda: self.server.get_consent_grant(oreq, end_user=None))
        except OAuth2Error as exc:
            # Not redirected: the client or redirect URI could not be trusted.
            return HTMLResponse(
                _page("Authorization failed", f"<p>{html.escape(exc.error)}: {html.escape(exc.description or '')}</p>"),
                status_code=400,
            )
        client: Client = grant.client
        if request.method == "GET":
            return HTMLResponse(_consent_page(client, oreq.args, oreq.payload.data.get("scope") or "", error=None))
        form = oreq.form
        account = form.get("username", "")[:64]
        address = request.client.host if request.client else "unknown"
        # Refused before the password is even looked at, right or wrong: no guessing past the limit.
        wait = self._sign_in_wait(account, address)
        if wait > 0:
            self.count("oauth_authorize", "sign_in_rate_limited")
            log.info("oauth.sign_in_rate_limited", client_id=client.client_id, address=address)
            page = _consent_page(
                client,
                oreq.args,
                oreq.payload.data.get("scope") or "",
                error=f"too many failed sign-ins: try again in {retry_after(wait)} s",
            )
            return HTMLResponse(page, status_code=429, headers={"Retry-After": retry_after(wait)})
        owner = await self.store.sign_in(account, form.get("password", "")[:1024])
        if owner is None:
            self.by_account.charge(account)
            self.by_address.charge(address)
            self.count("oauth_authorize", "sign_in_failed")
            log.info("oauth.sign_in_failed", client_id=client.client_id)
            page = _consent_page(
                client, oreq.args, oreq.payload.data.get("scope") or "", error="wrong user or password"
            )
            return HTMLResponse(page, status_code=401)
        owned = await self.store.owner_sites(owner.owner_id)
        wanted = (form.get("sites") or oreq.args.get("sites") or "").split()
        chosen = tuple(s for s in wanted if s in owned) if wanted else tuple(owned)
        grant_user = Owner(owner.owner_id, chosen) if form.get("decision") == "allow" else None
        oreq.user = grant_user
        response: Response = await self._in_thread(
            lambda: self.server.create_authorization_response(oreq, grant_user=grant_user, grant=grant)
        )
        log.info(
            "oauth.authorized",
            client_id=client.client_id,
            owner_id=owner.owner_id,
            sites=list(chosen),
            granted=grant_user is not None,
        )
        return response

    async def token(self, request: Request) -> Response:
        try:
            oreq = await _read(request)
        except OAuthFormError as exc:
            return JSONResponse({"error": "invalid_request", "error_description": str(exc)}, status_code=400)
        response: Response = await self._in_thread(lambda: self.server.create_token_response(oreq))
        return response

    async def revoke(self, request: Request) -> Response:
        try:
            oreq = await _read(request)
        except OAuthFormError as exc:
            return JSONResponse({"error": "invalid_request", "error_description": str(exc)}, status_code=400)
        response: Response = await self._in_thread(lambda: self.server.create_endpoint_response("revocation", oreq))
        return response

    # --- operator administration (admin token) ---

    async def create_owner(self, request: Request) -> Response:
        self.require_admin(request)
        try:
            body = msgspec.json.decode(await request.body(), type=OwnerRegistration)
            body.check()
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return JSONResponse({"error": "malformed", "detail": str(exc)}, status_code=422)
        async with self.db.engine.connect() as conn:
            known = {r[0] for r in await conn.execute(select(sites.c.site_id).where(sites.c.site_id.in_(body.sites)))}
        missing = sorted(set(body.sites) - known)
        if missing:
            return JSONResponse({"error": "unknown_site", "detail": f"not registered: {missing}"}, status_code=422)
        pw = await anyio.to_thread.run_sync(hash_password, body.password)
        async with self.db.engine.begin() as conn:
            await conn.execute(delete(owner_sites).where(owner_sites.c.owner_id == body.owner_id))
            await conn.execute(delete(owners).where(owners.c.owner_id == body.owner_id))
            await conn.execute(
                owners.insert().values(owner_id=body.owner_id, password_hash=pw, created_at=self.clock())
            )
            if body.sites:
                await conn.execute(
                    owner_sites.insert(), [{"owner_id": body.owner_id, "site_id": s} for s in body.sites]
                )
        log.info("oauth.owner_saved", owner_id=body.owner_id, sites=body.sites)
        return JSONResponse({"owner_id": body.owner_id, "sites": body.sites}, status_code=201)

    async def create_client(self, request: Request) -> Response:
        self.require_admin(request)
        try:
            body = msgspec.json.decode(await request.body(), type=ClientRegistration)
            body.check()
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return JSONResponse({"error": "malformed", "detail": str(exc)}, status_code=422)
        secret = secrets.token_urlsafe(32) if body.confidential else None
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    oauth_clients.insert().values(
                        client_id=body.client_id,
                        name=body.name,
                        secret_hash=digest(secret) if secret else None,
                        redirect_uris=body.redirect_uris,
                        grant_types=body.grant_types,
                        scope=" ".join(body.scope.split()),
                        sites=body.sites,
                        created_at=self.clock(),
                    )
                )
        except IntegrityError:
            return JSONResponse({"error": "conflict", "detail": "client_id already registered"}, status_code=409)
        log.info("oauth.client_registered", client_id=body.client_id, grant_types=body.grant_types)
        out: dict[str, Any] = {"client_id": body.client_id}
        if secret:
            out["client_secret"] = secret  # shown once; only its digest is stored
        return JSONResponse(out, status_code=201)


class OwnerRegistration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    owner_id: str
    password: str
    sites: list[str] = []

    def check(self) -> None:
        if not _ID.match(self.owner_id):
            raise ValueError("owner_id: 1-64 of A-Z a-z 0-9 . _ @ -")
        if not 10 <= len(self.password) <= 256:
            raise ValueError("password: 10..256 characters")
        if len(self.sites) > 1000 or len(set(self.sites)) != len(self.sites):
            raise ValueError("sites: at most 1000, no duplicates")


class ClientRegistration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    client_id: str
    name: str
    grant_types: list[str]
    scope: str
    redirect_uris: list[str] = []
    confidential: bool = True
    sites: list[str] = []  # client credentials: which sites ("*": all)

    def check(self) -> None:
        if not _ID.match(self.client_id) or self.client_id == WEB_CLIENT_ID:
            raise ValueError("client_id: 1-64 of A-Z a-z 0-9 . _ @ - (and not the web view's)")
        if not 1 <= len(self.name) <= 128:
            raise ValueError("name: 1..128 characters")
        if not self.grant_types or any(g not in GRANT_TYPES for g in self.grant_types):
            raise ValueError(f"grant_types: some of {list(GRANT_TYPES)}")
        if "client_credentials" in self.grant_types and not self.confidential:
            raise ValueError("client_credentials needs a confidential client")
        bad = [s for s in self.scope.split() if s not in SCOPES]
        if bad or not self.scope.split():
            raise ValueError(f"scope: some of {list(SCOPES)} (not {bad})")
        if "authorization_code" in self.grant_types and not self.redirect_uris:
            raise ValueError("redirect_uris: required for authorization_code")
        if len(self.redirect_uris) > 10:
            raise ValueError("redirect_uris: at most 10")
        for uri in self.redirect_uris:
            if len(uri) > 512 or not _good_redirect(uri):
                raise ValueError(f"redirect_uri {uri[:80]!r}: https, or http on loopback; no fragment")
        if len(self.sites) > 1000:
            raise ValueError("sites: at most 1000")
        if self.sites and "client_credentials" not in self.grant_types:
            raise ValueError("sites: only for client_credentials clients (owners grant sites to apps)")
        if ALL_SITES in self.sites and len(self.sites) != 1:
            raise ValueError('sites: "*" stands alone')


def _good_redirect(uri: str) -> bool:
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    if parts.fragment or not parts.hostname:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


# --- pages --------------------------------------------------------------------------------------


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{html.escape(title)}</title><style>body{{font:15px system-ui,sans-serif;max-width:34em;margin:3em auto}}"
        "label{display:block;margin:.6em 0}input{font:inherit}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def _consent_page(client: Client, args: Mapping[str, str], scope: str, *, error: str | None) -> str:
    action = "/oauth/authorize?" + urlencode(dict(args))
    scopes = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in client.get_allowed_scope(scope).split())
    err = f"<p role='alert' style='color:#b00'>{html.escape(error)}</p>" if error else ""
    return _page(
        "Sign in to zapcloud",
        f"<p><b>{html.escape(client.name)}</b> asks to read, on your sites:</p><ul>{scopes}</ul>{err}"
        f"<form method='post' action='{html.escape(action)}'>"
        "<label>User <input name='username' autocomplete='username' required></label>"
        "<label>Password <input name='password' type='password' autocomplete='current-password' required></label>"
        "<label>Sites (space-separated; empty: all yours) <input name='sites'></label>"
        "<button name='decision' value='allow'>Allow</button> "
        "<button name='decision' value='deny'>Deny</button></form>",
    )


AwaitableResponse = Callable[[Request], Awaitable[Response]]
