"""Everything the daemon needs for its cloud link, built from the config in one place."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
from nacl.signing import SigningKey

from cloud_sync.channel import ChannelClient, LiveState
from cloud_sync.channel_wire import ws_url
from cloud_sync.commands import Applier, DemandResponse, NonceWindow
from cloud_sync.fetcher import PlanFetcher
from cloud_sync.keys import load_verify_key_b64
from cloud_sync.link import LinkStatus
from cloud_sync.transport import require_secure_url
from cloud_sync.uploader import Uploader
from zapd.clock import Clock
from zapd.config_structs import CloudConfig
from zapd.model import DerCapabilities, Plan
from zapd.override import OperatorOverride
from zapd.store import Store

# Debian/Ubuntu's ca-certificates: one file per CA, named by subject hash (`openssl rehash`).
SYSTEM_CA_DIR = Path("/etc/ssl/certs")


def tls_context() -> ssl.SSLContext | bool:
    """Verify the cloud against the system's CA directory, looked up per handshake; else httpx's default.

    httpx's default loads certifi's whole bundle into memory (~1 MB of a 50 MB gateway budget); with
    a hashed CA directory OpenSSL reads only the CA a handshake needs, and a fleet's private CA is
    added the system's way (update-ca-certificates). `SSL_CERT_FILE`/`SSL_CERT_DIR` still win.
    """
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return True  # httpx honours them
    if not any(SYSTEM_CA_DIR.glob("*.0")):
        return True
    return ssl.create_default_context(capath=str(SYSTEM_CA_DIR))


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
        self.client = httpx.AsyncClient(
            base_url=config.url, timeout=httpx.Timeout(config.timeout_s), verify=tls_context()
        )
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
        self._config = config
        self._site_id = site_id
        self._key = key
        self._clock = clock
        self._pinned = pinned_key
        # DR windows exist without the channel too (the controller always asks them); empty then.
        self.demand = DemandResponse(store)
        self.nonces = NonceWindow(store)
        self.channel: ChannelClient | None = None

    async def load(self) -> None:
        """State from before a restart: the cached plan, DR windows still running, nonces still valid."""
        await self.fetcher.load_cached()
        await self.demand.load(self._clock.now())
        await self.nonces.load()

    def enable_channel(
        self,
        *,
        override: OperatorOverride | None,
        grid_w: Callable[[], float | None],
        live: Callable[[], LiveState],
        site_import_w: float,
        site_export_w: float | None,
    ) -> ChannelClient | None:
        """The live channel if the config has it on (the default); the daemon runs `channel.run`."""
        if not self._config.channel:
            return None
        applier = Applier(
            demand=self.demand,
            override=override,
            grid_w=grid_w,
            site_import_w=site_import_w,
            site_export_w=site_export_w,
            fetch_plan=self.fetcher.fetch_now,
        )
        self.channel = ChannelClient(
            url=ws_url(self._config.url),
            site_id=self._site_id,
            key=self._key,
            cloud_key=self._pinned,
            clock=self._clock,
            fetcher=self.fetcher,
            nonces=self.nonces,
            applier=applier,
            live=live,
            status_s=self._config.channel_status_s,
            reconnect_s=self._config.channel_reconnect_s,
            tls=tls if isinstance(tls := tls_context(), ssl.SSLContext) else None,
        )
        return self.channel

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
        out["channel"] = self.channel.as_dict() if self.channel is not None else {"state": "off"}
        out["dr_windows"] = [
            {"start": w.start.isoformat(), "end": w.end.isoformat(), "import_limit_w": w.import_limit_w,
             "export_limit_w": w.export_limit_w}
            for w in self.demand.windows
        ]  # fmt: skip
        return out

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        await self.client.aclose()
