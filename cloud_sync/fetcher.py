"""Fetch, verify and cache the site's plan.

A plan is taken only when it is signed by the pinned cloud key, is for this site, has a
version strictly above the last accepted one (persisted, so a replay after a restart is
still refused), stays within the bounds of cloud_sync.wire (version, validity, numbers),
was not issued in the Zap's future and has not expired. Anything else is rejected, counted,
logged once per reason, and the plan in force stays in force.

The one way back from a version the cloud can no longer exceed is the operator's reset
(`zapd plan reset-version`, `reset_plan_version`): it forgets the version and the cached
plans and records the moment; from then on only a plan issued after that moment (less the
clock-skew allowance) is taken, so a captured older plan cannot be replayed into the gap.
The running fetcher notices the reset at its next fetch. State an older zapd accepted that
breaks today's bounds is reset the same way, automatically, at start.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import httpx
import structlog
from nacl.signing import SigningKey, VerifyKey

from cloud_sync.link import LinkStatus
from cloud_sync.transport import request_limited
from cloud_sync.wire import (
    HEADER_SIGNATURE,
    MAX_BODY_BYTES,
    MAX_PLAN_VERSION,
    MAX_REQUEST_SKEW_S,
    PlanRejected,
    WireError,
    check_plan,
    etag,
    format_ts,
    sign_request,
    verify_plan,
)
from drivers.resilience import Backoff
from zapd.clock import Clock
from zapd.model import Plan
from zapd.store import Store

log = structlog.get_logger(__name__)

ACCEPTED_VERSION_KEY = "plan.accepted_version"
# When the operator last reset the plan version (RFC 3339 UTC); see reset_plan_version.
RESET_AT_KEY = "plan.reset_at"


async def reset_plan_version(store: Store, now: datetime) -> int | None:
    """Forget the accepted plan version and every cached plan; returns the version forgotten.

    After this the Zap runs its fallback rules until the cloud serves a plan issued after
    `now - MAX_REQUEST_SKEW_S`, of any version; versions must rise again from that one. The
    issued_at floor is what keeps the reset safe against replay: every plan captured before
    the reset was issued before it (the skew allowance aside), and it stays refused.
    """
    raw = await store.kv_get(ACCEPTED_VERSION_KEY)
    cached = await store.latest_plan()
    versions = [v for v in (_parse_version(raw), cached.plan.version if cached else None) if v is not None]
    await store.forget_plans([ACCEPTED_VERSION_KEY], {RESET_AT_KEY: format_ts(now)})
    return max(versions, default=None)


def _parse_version(raw: str | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _parse_reset(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        ts = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else None


class PlanFetcher:
    def __init__(
        self,
        *,
        store: Store,
        client: httpx.AsyncClient,
        site_id: str,
        key: SigningKey,
        pinned_key: VerifyKey,
        clock: Clock,
        link: LinkStatus,
        interval_s: float = 60.0,
    ) -> None:
        self._store = store
        self._client = client
        self._site_id = site_id
        self._key = key
        self._pinned = pinned_key
        self._clock = clock
        self._link = link
        self._interval_s = interval_s
        self._backoff = Backoff(1.0, 300.0)
        self.plan: Plan | None = None
        self.accepted_version: int | None = None
        self.last_ok: datetime | None = None
        self.rejected: dict[str, int] = {}
        self._logged_reasons: set[str] = set()
        self._reset_raw: str | None = None
        self._reset_seen = False
        self.issued_floor: datetime | None = None
        # The poll and the live channel (cloud_sync/channel.py) may both fetch: one at a time.
        self._fetch_lock = asyncio.Lock()

    @property
    def path(self) -> str:
        return f"/v1/sites/{self._site_id}/plan"

    async def load_cached(self) -> None:
        """Resume with the cached plan after a restart; it was verified when it arrived.

        State that today's rules refuse (an older zapd took a version above MAX_PLAN_VERSION
        or a plan valid for years) would pin the Zap for good: it is reset, and logged.
        """
        raw = await self._store.kv_get(ACCEPTED_VERSION_KEY)
        version = _parse_version(raw)
        cached = await self._store.latest_plan()
        problem = None
        if raw is not None and (version is None or not 1 <= version <= MAX_PLAN_VERSION):
            problem = f"accepted version {raw} is outside 1..{MAX_PLAN_VERSION}"
        elif cached is not None:
            try:
                check_plan(cached.plan)
            except WireError as exc:
                problem = f"cached plan v{cached.plan.version}: {exc}"
        if problem is not None:
            forgotten = await reset_plan_version(self._store, self._clock.now())
            log.warning("plan.state_reset", reason=problem, forgotten_version=forgotten)
            version, cached = None, None
        self.accepted_version = version
        if cached is not None and cached.plan.site_id == self._site_id:
            self.plan = cached.plan
            if self.accepted_version is None or cached.plan.version > self.accepted_version:
                self.accepted_version = cached.plan.version
        await self._apply_reset()

    async def _apply_reset(self) -> None:
        """Take in a reset made by `zapd plan reset-version`, also while this zapd runs.

        The first look only learns the issued_at floor (the state loaded is already the reset
        one); a later change of the marker means another process reset the store under us.
        """
        raw = await self._store.kv_get(RESET_AT_KEY)
        if self._reset_seen and raw == self._reset_raw:
            return
        changed = self._reset_seen and raw is not None
        self._reset_seen, self._reset_raw = True, raw
        reset_at = _parse_reset(raw)
        self.issued_floor = reset_at - timedelta(seconds=MAX_REQUEST_SKEW_S) if reset_at else None
        if changed:
            log.warning("plan.version_reset", forgotten_version=self.accepted_version, reset_at=raw)
            # Idempotent: also forgets a plan this process stored after the reset was written.
            await self._store.forget_plans([ACCEPTED_VERSION_KEY], {RESET_AT_KEY: str(raw)})
            self.plan = None
            self.accepted_version = None
            self._logged_reasons.clear()

    def fresh(self, now: datetime) -> bool:
        """The plan counts as current while the link answered within three fetch intervals."""
        return self.last_ok is not None and now - self.last_ok <= timedelta(seconds=3 * self._interval_s)

    async def fetch_now(self) -> int | None:
        """A fetch outside the poll (the channel said a new plan is stored); the version in force after it."""
        now = self._clock.now()
        try:
            await self.fetch_once()
        except (httpx.HTTPError, OSError) as exc:
            self._link.failed(now, "plan", f"{type(exc).__name__}: {exc}")
            raise
        self._link.ok(now, "plan")
        self._link.last_plan_fetch = now
        return self.accepted_version

    async def fetch_once(self) -> str:
        """One conditional GET. Returns 'new', 'unchanged', 'none' or 'rejected:<reason>'."""
        async with self._fetch_lock:
            return await self._fetch_once()

    async def _fetch_once(self) -> str:
        await self._apply_reset()
        now = self._clock.now()
        headers = sign_request(self._key, "GET", self.path, now)
        if self.accepted_version is not None:
            headers["If-None-Match"] = etag(self.accepted_version)
        resp = await request_limited(self._client, "GET", self.path, limit=MAX_BODY_BYTES, headers=headers)
        if resp.status_code == 304:
            self.last_ok = now
            return "unchanged"
        if resp.status_code == 404:
            self.last_ok = now
            return "none"
        if resp.status_code != 200:
            raise httpx.HTTPStatusError(
                f"plan fetch: HTTP {resp.status_code}",
                request=resp.request,
                response=httpx.Response(resp.status_code, request=resp.request),
            )
        try:
            plan = verify_plan(
                resp.content,
                resp.headers.get(HEADER_SIGNATURE),
                self._pinned,
                site_id=self._site_id,
                min_version_exclusive=self.accepted_version,
                now=now,
                issued_floor=self.issued_floor,
            )
        except PlanRejected as exc:
            self.last_ok = now  # the link works; the plan does not
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            if exc.reason not in self._logged_reasons:
                self._logged_reasons.add(exc.reason)
                log.warning("plan.rejected", reason=exc.reason, detail=exc.detail, keeping=self.accepted_version)
            return f"rejected:{exc.reason}"
        await self._store.save_plan(plan, resp.content, resp.headers.get(HEADER_SIGNATURE), now)
        await self._store.kv_set(ACCEPTED_VERSION_KEY, str(plan.version))
        self.plan = plan
        self.accepted_version = plan.version
        self.last_ok = now
        self._logged_reasons.clear()
        log.info("plan.accepted", version=plan.version, slots=len(plan.slots), valid_until=plan.valid_until.isoformat())
        return "new"

    async def run(self) -> None:
        while True:
            now = self._clock.now()
            try:
                await self.fetch_once()
                self._link.ok(now, "plan")
                self._link.last_plan_fetch = now
                self._backoff.reset()
                await self._clock.sleep(self._interval_s)
            except (httpx.HTTPError, OSError) as exc:
                self._link.failed(now, "plan", f"{type(exc).__name__}: {exc}")
                await self._clock.sleep(min(self._interval_s, self._backoff.next_delay()))
