"""Everything the daemon needs for its cloud link, built from the config in one place."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import httpx
from nacl.signing import SigningKey

from cloud_sync.fetcher import PlanFetcher
from cloud_sync.keys import load_verify_key_b64
from cloud_sync.link import LinkStatus
from cloud_sync.transport import require_secure_url
from cloud_sync.uploader import Uploader
from zapd.clock import Clock
from zapd.config import CloudConfig
from zapd.model import DerCapabilities, Plan
from zapd.store import Store


class CloudSync:
    def __init__(
        self,
        *,
        config: CloudConfig,
        site_id: str,
        key: SigningKey,
        store: Store,
        clock: Clock,
        capabilities: Callable[[], list[DerCapabilities]],
    ) -> None:
        # The client refuses what `zapd config check` refuses, for callers that skip the CLI.
        require_secure_url(config.url, config.allow_insecure)
        self.link = LinkStatus()
        pinned_key = load_verify_key_b64(config.public_key)
        self.client = httpx.AsyncClient(base_url=config.url, timeout=httpx.Timeout(config.timeout_s))
        self.uploader = Uploader(
            store=store,
            client=self.client,
            site_id=site_id,
            key=key,
            clock=clock,
            link=self.link,
            interval_s=config.upload_interval_s,
            batch_max=config.batch_max,
            capabilities=capabilities,
            cloud_key=pinned_key,
        )
        self.fetcher = PlanFetcher(
            store=store,
            client=self.client,
            site_id=site_id,
            key=key,
            pinned_key=pinned_key,
            clock=clock,
            link=self.link,
            interval_s=config.plan_interval_s,
        )
        self._store = store

    def plan(self) -> Plan | None:
        return self.fetcher.plan

    def fresh(self, now: datetime) -> bool:
        return self.fetcher.fresh(now)

    async def status(self) -> dict[str, object]:
        out = self.link.as_dict()
        out["outbox_depth"] = await self._store.outbox_depth()
        out["acked_seq"] = await self._store.acked_seq()
        out["dropped_by_retention"] = int(await self._store.kv_get("sync.dropped_by_retention") or 0)
        out["plans_rejected"] = dict(self.fetcher.rejected)
        out["acks_rejected"] = dict(self.uploader.acks_rejected)
        out["plan_version"] = self.fetcher.accepted_version
        return out

    async def close(self) -> None:
        await self.client.aclose()
