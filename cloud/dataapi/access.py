"""Who is asking, and what they may read: the one check every data-API resolver and route makes.

A request carries either the operator's admin token (every scope, every site) or an OAuth access
token (cloud/dataapi/oauth.py) that names its scopes and the sites its owner granted. `Access.require`
is the single gate: scope AND site, or `AccessDenied`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from cloud.dataapi.tables import oauth_tokens, owner_sites
from cloud.db import Database

SITE_READ = "site:read"
TELEMETRY_READ = "telemetry:read"
TELEMETRY_LIVE = "telemetry:live"
PRICES_READ = "prices:read"
PLANS_READ = "plans:read"
SCOPES: tuple[str, ...] = (SITE_READ, TELEMETRY_READ, TELEMETRY_LIVE, PRICES_READ, PLANS_READ)
ALL_SITES = "*"  # in a client-credentials client's site list: every site (operator services)


class AccessDenied(Exception):
    """The token is missing, expired, revoked, or lacks the scope or the site."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def digest(secret: str) -> str:
    """How every token-like secret is stored: SHA-256 hex (they are random 256-bit strings)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Access:
    scopes: frozenset[str]
    sites: frozenset[str] | None  # None: every site (the operator)
    client_id: str | None = None
    owner_id: str | None = None

    @property
    def operator(self) -> bool:
        return self.sites is None

    def allows(self, scope: str, site_id: str | None = None) -> bool:
        if scope not in self.scopes:
            return False
        return site_id is None or self.sites is None or site_id in self.sites

    def require(self, scope: str, site_id: str | None = None) -> None:
        if scope not in self.scopes:
            raise AccessDenied("insufficient_scope", f"this token lacks scope {scope!r}")
        if site_id is not None and self.sites is not None and site_id not in self.sites:
            # Same answer whether the site exists or not: a token never learns about other sites.
            raise AccessDenied("forbidden_site", "this token has no grant for that site")

    def visible_sites(self, candidates: list[str]) -> list[str]:
        return candidates if self.sites is None else [s for s in candidates if s in self.sites]


OPERATOR = Access(scopes=frozenset(SCOPES), sites=None, client_id=None, owner_id=None)


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


async def authenticate(db: Database, authorization: str | None, admin_token: str | None, now: datetime) -> Access:
    """Resolve an `Authorization: Bearer ...` header value; AccessDenied if it opens nothing."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AccessDenied("missing_token", "Authorization: Bearer <token> required")
    if admin_token is not None and hmac.compare_digest(token.encode(), admin_token.encode()):
        return OPERATOR
    if len(token) > 512:
        raise AccessDenied("invalid_token", "token not recognised")
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(oauth_tokens).where(oauth_tokens.c.access_hash == digest(token)))).first()
        if row is None:
            raise AccessDenied("invalid_token", "token not recognised")
        m = row._mapping
        if m["revoked"]:
            raise AccessDenied("invalid_token", "token revoked")
        if _utc(m["expires_at"]) <= now:
            raise AccessDenied("invalid_token", "token expired")
        granted = [str(s) for s in m["sites"]]
        owner = m["owner_id"]
        if owner is not None:
            # An owner's grant reaches only the sites they still own.
            owned = {
                r[0] for r in await conn.execute(select(owner_sites.c.site_id).where(owner_sites.c.owner_id == owner))
            }
            sites: frozenset[str] | None = frozenset(s for s in granted if s in owned)
        else:
            sites = None if ALL_SITES in granted else frozenset(granted)
    scopes = frozenset(s for s in str(m["scope"]).split() if s in SCOPES)
    return Access(scopes=scopes, sites=sites, client_id=m["client_id"], owner_id=owner)
