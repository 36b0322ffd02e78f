"""Operations shared by the HTTP handlers, the planner, tests and the demo.

They take a `Database` rather than an HTTP client so the planner (in the same deployment)
publishes plans without a round trip through the API, and tests can set up sites directly.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from nacl.signing import SigningKey
from sqlalchemy.exc import SQLAlchemyError

from cloud.db import Database, StoredPlan
from cloud.server.bounds import check_plan_publish, check_public_key
from cloud_sync.keys import key_id, load_verify_key_b64
from cloud_sync.wire import MAX_REQUEST_SKEW_S, SignedPlan, WireError, check_plan, format_ts, sign_plan
from zapd.model import Plan

log = structlog.get_logger("zapcloud.service")

_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


async def register_site(
    db: Database,
    site_id: str,
    public_key_b64: str,
    *,
    assets: Any = None,
    tariff: Any = None,
    now: datetime | None = None,
) -> str:
    """Bind `site_id` to a Zap public key (re-keying if the site exists); returns the key id.

    Raises ValueError for a bad site id or key, SiteKeyConflictError if the key belongs to
    another site.
    """
    if not _SITE_ID.match(site_id):
        raise ValueError(f"bad site id {site_id!r}: 1-64 of A-Z a-z 0-9 . _ -, not starting with . _ -")
    verify_key = load_verify_key_b64(public_key_b64)
    check_public_key(bytes(verify_key))
    kid = key_id(verify_key)
    await db.upsert_site(
        site_id,
        public_key_b64.strip(),
        kid,
        assets=assets,
        tariff=tariff,
        now=now or datetime.now(UTC),
    )
    return kid


async def publish_plan(
    db: Database,
    signing_key: SigningKey,
    plan: Plan,
    *,
    now: datetime | None = None,
    future_skew: timedelta = timedelta(seconds=MAX_REQUEST_SKEW_S),
) -> SignedPlan:
    """Sign `plan` with the cloud key and make it the site's current plan.

    Raises WireError for a plan the Zap would reject anyway (malformed or already expired) or that is
    outside the cloud's bounds (issued now, valid at most 7 days, version not far above the stored one),
    LookupError for an unknown site and PlanVersionConflictError if the version is not above
    the stored one (the Zap only accepts strictly increasing versions).
    """
    check_plan(plan)
    now = now or datetime.now(UTC)
    if plan.valid_until <= now:
        raise WireError(f"plan already expired (valid_until {format_ts(plan.valid_until)})")
    if await db.get_site(plan.site_id) is None:
        raise LookupError(f"unknown site {plan.site_id!r}")
    try:
        check_plan_publish(plan, now, await db.latest_plan_version(plan.site_id), future_skew)
    except ValueError as exc:
        raise WireError(str(exc)) from None
    signed = sign_plan(signing_key, plan)
    await db.insert_plan(
        StoredPlan(
            site_id=plan.site_id,
            version=plan.version,
            body=signed.body,
            signature=signed.signature,
            issued_at=plan.issued_at.astimezone(UTC),
            valid_until=plan.valid_until.astimezone(UTC),
        )
    )
    await _notify_plan(db, plan.site_id, plan.version)
    return signed


async def _notify_plan(db: Database, site_id: str, version: int) -> None:
    """Ring the site's live channel (if any); a failure only delays the plan to the next poll."""
    from cloud.server.channel_hub import notify_plan

    try:
        await notify_plan(db, site_id, version)
    except SQLAlchemyError as exc:
        log.warning("server.plan_notify_failed", site_id=site_id, version=version, error=type(exc).__name__)


async def next_plan_version(db: Database, site_id: str) -> int:
    """The version a new plan for the site should carry (a racing worker gets a conflict)."""
    latest = await db.latest_plan_version(site_id)
    return 1 if latest is None else latest + 1
