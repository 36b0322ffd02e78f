"""Fetch, verify and cache the site's plan.

A plan is taken only when it is signed by the pinned cloud key, is for this site, has a
version strictly above the last accepted one (persisted, so a replay after a restart is
still refused) and has not expired. Anything else is rejected, counted, logged once per
reason, and the plan in force stays in force.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import structlog
from nacl.signing import SigningKey, VerifyKey

from cloud_sync.link import LinkStatus
from cloud_sync.wire import HEADER_SIGNATURE, PlanRejected, etag, sign_request, verify_plan
from drivers.modbus.backoff import Backoff
from zapd.clock import Clock
from zapd.model import Plan
from zapd.store import Store

log = structlog.get_logger(__name__)

ACCEPTED_VERSION_KEY = "plan.accepted_version"


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

    @property
    def path(self) -> str:
        return f"/v1/sites/{self._site_id}/plan"

    async def load_cached(self) -> None:
        """Resume with the cached plan after a restart; it was verified when it arrived."""
        version = await self._store.kv_get(ACCEPTED_VERSION_KEY)
        self.accepted_version = int(version) if version is not None else None
        cached = await self._store.latest_plan()
        if cached is not None and cached.plan.site_id == self._site_id:
            self.plan = cached.plan
            if self.accepted_version is None or cached.plan.version > self.accepted_version:
                self.accepted_version = cached.plan.version

    def fresh(self, now: datetime) -> bool:
        """The plan counts as current while the link answered within three fetch intervals."""
        return self.last_ok is not None and now - self.last_ok <= timedelta(seconds=3 * self._interval_s)

    async def fetch_once(self) -> str:
        """One conditional GET. Returns 'new', 'unchanged', 'none' or 'rejected:<reason>'."""
        now = self._clock.now()
        headers = sign_request(self._key, "GET", self.path, now)
        if self.accepted_version is not None:
            headers["If-None-Match"] = etag(self.accepted_version)
        resp = await self._client.get(self.path, headers=headers)
        if resp.status_code == 304:
            self.last_ok = now
            return "unchanged"
        if resp.status_code == 404:
            self.last_ok = now
            return "none"
        if resp.status_code != 200:
            raise httpx.HTTPStatusError(f"plan fetch: HTTP {resp.status_code}", request=resp.request, response=resp)
        try:
            plan = verify_plan(
                resp.content,
                resp.headers.get(HEADER_SIGNATURE),
                self._pinned,
                site_id=self._site_id,
                min_version_exclusive=self.accepted_version,
                now=now,
            )
        except PlanRejected as exc:
            self.last_ok = now  # the link works; the plan does not
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            if exc.reason not in self._logged_reasons:
                self._logged_reasons.add(exc.reason)
                log.warning("plan_rejected", reason=exc.reason, detail=exc.detail, keeping=self.accepted_version)
            return f"rejected:{exc.reason}"
        await self._store.save_plan(plan, resp.content, resp.headers.get(HEADER_SIGNATURE), now)
        await self._store.kv_set(ACCEPTED_VERSION_KEY, str(plan.version))
        self.plan = plan
        self.accepted_version = plan.version
        self.last_ok = now
        self._logged_reasons.clear()
        log.info("plan_accepted", version=plan.version, slots=len(plan.slots), valid_until=plan.valid_until.isoformat())
        return "new"

    async def run(self) -> None:
        while True:
            now = self._clock.now()
            try:
                await self.fetch_once()
                self._link.ok(now)
                self._link.last_plan_fetch = now
                self._backoff.reset()
                await self._clock.sleep(self._interval_s)
            except (httpx.HTTPError, OSError) as exc:
                self._link.failed(now, "plan", f"{type(exc).__name__}: {exc}")
                await self._clock.sleep(min(self._interval_s, self._backoff.next_delay()))
