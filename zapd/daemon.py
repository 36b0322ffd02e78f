"""`zapd run`: wires config, store, drivers, controller and the supervisor into one process.

Shutdown on SIGTERM/SIGINT: stop the tasks, put controllable devices in their safe mode
(shielded and time-limited), flush queued telemetry to the store, tell systemd, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import signal
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import structlog

from drivers.api import ReadingGuard
from drivers.config_structs import BatteryLimits
from drivers.resilience import FailureLatch
from zapd.api import ApiContext, LocalApi
from zapd.clock import Clock
from zapd.config_structs import ZapdConfig
from zapd.config_types import meter_ders
from zapd.controller import Controller
from zapd.devices import DeviceSet, build_devices
from zapd.energy import TOTALS, EnergyTotals
from zapd.envelope import SiteLimits
from zapd.model import DerCapabilities, Plan, Reading
from zapd.override import OperatorOverride
from zapd.plan_source import LocalPlanFile, PlanSource
from zapd.retention import retention_bounds
from zapd.sdnotify import Notifier
from zapd.siteview import ControlView, SiteView, SyncGauges
from zapd.state import SiteState
from zapd.store import Store
from zapd.supervisor import Supervisor
from zapd.telemetry_writer import TelemetryWriter

if TYPE_CHECKING:  # imported where the config asks for them: a site pays only for what it runs
    from cloud_sync.channel import LiveState
    from cloud_sync.session import CloudSync
    from zapd.homeassistant import HomeAssistant
    from zapd.metrics import MetricsServer

log = structlog.get_logger(__name__)

RETENTION_EVERY_S = 60.0  # clock seconds between retention passes
SAFE_MODE_TIMEOUT_S = 10.0
STOP_TASKS_TIMEOUT_S = 5.0


def dump_tasks() -> None:
    """SIGUSR1: print every asyncio task's stack to stderr, to see what a stuck daemon waits for."""
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)


class StartupError(Exception):
    """The daemon cannot start (e.g. the key is missing); one clear line for the journal."""


def battery_limits(devices: DeviceSet) -> dict[str, BatteryLimits]:
    """Per battery, the config's limits within the nameplate its driver reports (config may lower, never raise);
    a limit neither gives is unknown, which the envelope takes as "cannot move"."""
    caps = {c.der_id: c for d in devices.drivers for c in d.capabilities()}
    out: dict[str, BatteryLimits] = {}
    for der_id, limits in devices.battery_limits.items():
        cap = caps.get(der_id)
        nameplate = None
        if cap is not None:
            nameplate = BatteryLimits.nameplate(
                capacity_wh=cap.capacity_wh, max_charge_w=cap.max_charge_w, max_discharge_w=cap.max_discharge_w
            )
        out[der_id] = limits.within(nameplate)
    return out


def site_limits(config: ZapdConfig) -> SiteLimits:
    margin = config.control.fuse_margin
    return SiteLimits(
        fuse_limit_w=config.site.fuse_limit_w * margin,
        fuse_a=config.site.fuse_a * margin,
        voltage_v=config.site.voltage_v,
        phases=config.site.phases,
        max_export_w=config.site.max_export_w,
    )


class Daemon:
    def __init__(self, config: ZapdConfig, clock: Clock, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.supervisor = Supervisor()
        self.devices = build_devices(config, clock)
        self.state = SiteState(grid_meter=self.devices.grid_meter)
        self.plan_file = LocalPlanFile(config.plan.file) if config.plan.file else None
        self.store: Store | None = None
        self.controller: Controller | None = None
        self.telemetry: TelemetryWriter | None = None
        self.readings_in = 0
        self._stop = asyncio.Event()
        self.cloud: CloudSync | None = None
        self._sync_gauges = SyncGauges()
        self._metrics: MetricsServer | None = None
        self.energy = EnergyTotals()  # kWh totals for Home Assistant's Energy dashboard
        self.override = OperatorOverride(clock, self.state)  # zapctl and Home Assistant both set it
        self.api = LocalApi(  # local control API (zapctl); see docs/local-api.md
            ApiContext(config, self.view, self.override, store=lambda: self.store, link_status=self.link_status)
        )
        self.home_assistant: HomeAssistant | None = None

    @property
    def db_path(self) -> Path:
        return self.config.store.state_dir / "zapd.sqlite"

    def stop(self) -> None:
        self._stop.set()

    def _sink(self, reading: Reading) -> None:
        self.readings_in += 1
        self.state.update(reading, now=self.clock.now())
        self.api.publish(reading)
        self.energy.add(reading)
        if self.telemetry is not None:
            self.telemetry.add(reading)
        if reading.der_id == self.state.grid_meter and self.controller is not None:
            self.controller.wake()

    def _plan_sources(self) -> list[PlanSource]:
        """In order of preference: the cloud's plan when there is one, else the local plan file's."""
        return [s for s in (self.cloud, self.plan_file) if s is not None]

    def current_plan(self) -> Plan | None:
        return next((p for p in (s.plan() for s in self._plan_sources()) if p is not None), None)

    def plan_fresh(self) -> bool:
        """The preferred source's word; a local plan file is as fresh as the installer made it."""
        sources = self._plan_sources()
        return sources[0].fresh(self.clock.now()) if sources else True

    async def link_status(self) -> dict[str, object]:
        """Merged into `zapctl status` by the local API."""
        if self.cloud is None:
            return {"state": "not_configured"}
        return await self.cloud.status()

    def _start_cloud(self, store: Store) -> None:
        if self.config.cloud is None:
            return
        # httpx and the key handling only for a site with a cloud (lazy: see docs/decisions.md, footprint)
        from cloud_sync.keys import KeyFileError, load_signing_key, zap_key_path
        from cloud_sync.session import CloudSync
        from cloud_sync.transport import InsecureTransportError

        key_file = zap_key_path(self.config.store.state_dir)
        try:
            key = load_signing_key(key_file)
        except KeyFileError as exc:
            hint = f"create it with 'zapd keygen --state-dir {self.config.store.state_dir}'"
            raise StartupError(f"{exc}; {hint}") from None
        try:
            self.cloud = CloudSync(
                config=self.config.cloud,
                site_id=self.config.site.id,
                key=key,
                store=store,
                clock=self.clock,
                capabilities=self._capabilities,
            )
        except InsecureTransportError as exc:
            raise StartupError(str(exc)) from None

    def _live_state(self) -> LiveState:
        """For the channel's status frame (the fleet page shows the rung)."""
        from cloud_sync.channel import LiveState

        snap = self.state.snapshot(self.clock.now())
        socs = [b.soc for b in snap.batteries.values() if b.soc is not None]
        rung = self.controller.stats.rung if self.controller is not None else None
        return LiveState(
            rung=str(rung) if rung is not None else None,
            link=self.cloud.link.state if self.cloud is not None else "not_configured",
            soc=sum(socs) / len(socs) if socs else None,
            grid_w=snap.grid_w,
        )

    def _capabilities(self) -> list[DerCapabilities]:
        """What the drivers found, with each meter's configured role (the cloud plans on the grid meter's data)."""
        roles = {m.der_id: m.role for m in meter_ders(self.config.devices)}
        return [
            msgspec.structs.replace(c, role=roles[c.der_id]) if c.der_id in roles else c
            for d in self.devices.drivers
            for c in d.capabilities()
        ]

    def _keepalive_periods(self) -> dict[str, float]:
        """Per DER, the write period its device needs (the controller is the only writer)."""
        return {c.der_id: c.keepalive_s for d in self.devices.drivers for c in d.capabilities() if c.keepalive_s > 0}

    def _on_cycle(self) -> None:
        self.notifier.ready(status="controlling")
        self.notifier.watchdog()

    async def _retention(self) -> None:
        assert self.store is not None
        latch = FailureLatch(log, "telemetry.retention_failed", "telemetry.retention_recovered")
        while True:
            # With a cloud: unsent readings, bounded; without: a short local history (zapd/retention.py).
            b = retention_bounds(self.config.store, has_cloud=self.config.cloud is not None, now=self.clock.now())
            try:
                dropped = await self.store.enforce_retention(b.older_than, b.max_rows, counter_key=b.counter_key)
            except (sqlite3.Error, OSError) as exc:
                # Disk full: nothing was dropped (rolled back); retention tries again next round.
                latch.failed(error=str(exc))
            else:
                latch.ok()
                if dropped and b.lost:
                    log.warning("telemetry.dropped_by_retention", count=dropped)
                elif dropped:
                    log.debug("telemetry.expired_without_cloud", count=dropped)
            # Once a clock minute (a simulated day prunes like a real one), at most once a real second.
            await asyncio.sleep(max(1.0, RETENTION_EVERY_S / self.clock.speed))

    def _check_watchdog(self) -> None:
        """Under systemd the watchdog is pinged from the control cycle: a tick as long as WatchdogSec
        (in real time) gets zapd killed whenever no meter reading wakes the cycle, so refuse to start
        (exit 2, which the unit does not restart) instead of looping. `zapd config check` warns earlier."""
        watchdog_s = self.notifier.watchdog_s
        real_tick_s = self.config.control.tick_s / self.clock.speed
        if watchdog_s is not None and real_tick_s >= watchdog_s:
            raise StartupError(
                f"control.tick_s = {self.config.control.tick_s:g} s is not below the systemd watchdog "
                f"({watchdog_s:g} s, pinged from the control cycle): lower tick_s below {watchdog_s / 2:g} s"
            )

    async def run(self) -> int:
        self._check_watchdog()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        self.store = await Store.open(self.db_path)
        try:
            self._start_cloud(self.store)
        except StartupError:
            await self.store.close()
            raise
        if self.cloud is not None:
            await self.cloud.load()
        # each flush wakes the uploader, so a reading reaches the cloud right after it is stored
        self.telemetry = TelemetryWriter(
            self.store, on_written=self.cloud.uploader.data_ready if self.cloud is not None else None
        )
        await self.energy.load(self.store)  # before the first reading counts: a total never goes down
        for der_id, kind in self.devices.kinds.items():
            self.state.register(der_id, kind, self.devices.poll_s[der_id])
        self.controller = Controller(
            clock=self.clock,
            state=self.state,
            store=self.store,
            batteries=lambda: battery_limits(self.devices),
            actuators=self.devices.actuators,
            site=site_limits(self.config),
            tick_s=self.config.control.tick_s,
            refresh_s=self.config.control.refresh_s,
            deadband_w=self.config.control.deadband_w,
            settle_s=self.config.control.settle_s,
            dead_time_s=self.config.control.dead_time_s,
            estimate_tolerance_w=self.config.control.estimate_tolerance_w,
            plan_source=self.current_plan,
            plan_fresh=self.plan_fresh,
            on_cycle=self._on_cycle,
            forced_rung=self.override,
            evs=lambda: self.devices.ev_limits,
            keepalive_s=self._keepalive_periods,
            intent_overlay=self.cloud.demand.overlay if self.cloud is not None else None,
        )
        self.override.store, self.override.wake = self.store, self.controller.wake
        log.info(
            "daemon.starting",
            site=self.config.site.id,
            devices=[d.name for d in self.devices.drivers],
            db=str(self.db_path),
        )
        for driver in self.devices.drivers:
            guard = ReadingGuard(driver.name, self._sink, getattr(driver, "counters", None))
            self.supervisor.add(f"driver:{driver.name}", lambda d=driver, g=guard: d.run(g))  # type: ignore[misc]
        self.supervisor.add("controller", self._run_controller)
        self.supervisor.add("energy", functools.partial(self.energy.run, self.store))
        self.supervisor.add("telemetry_writer", self.telemetry.run)
        self.supervisor.add("retention", self._retention)
        self.supervisor.add("device_report", self._report_devices)
        self.supervisor.add("sync_gauges", self._refresh_sync_gauges)
        metrics = self.config.metrics
        if metrics.enabled:
            from zapd.metrics import MetricsServer

            try:
                self._metrics = MetricsServer(self.view, metrics.host, metrics.port)
                log.info("metrics.listening", host=metrics.host, port=metrics.port)
            except OSError as exc:
                log.error("metrics.unavailable", host=metrics.host, port=metrics.port, error=str(exc))
        self.supervisor.add("api", self.api.serve)
        if self.config.home_assistant.enabled:
            from zapd.homeassistant import HomeAssistant

            self.home_assistant = HomeAssistant(self.view, self.override, self.config.home_assistant)
            self.supervisor.add("home_assistant", self.home_assistant.run)
        if self.cloud is not None:
            self.supervisor.add("uploader", self.cloud.uploader.run)
            self.supervisor.add("plan_fetcher", self.cloud.fetcher.run)
            limits = site_limits(self.config)
            channel = self.cloud.enable_channel(
                override=self.override,
                grid_w=lambda: self.state.snapshot(self.clock.now()).grid_w,
                live=self._live_state,
                site_import_w=limits.fuse_limit_w,
                site_export_w=limits.max_export_w,
            )
            if channel is not None:
                self.supervisor.add("channel", channel.run)
        sup_task = asyncio.create_task(self.supervisor.run(), name="supervisor")
        stop_task = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({sup_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            log.info("daemon.stopping")
            self.notifier.stopping()
            sup_task.cancel()
            stop_task.cancel()
            # Bounded: a task that does not honour cancellation must not keep the devices from going safe.
            done, _ = await asyncio.wait({sup_task}, timeout=STOP_TASKS_TIMEOUT_S)
            if not done:
                log.error("daemon.tasks_did_not_stop", timeout_s=STOP_TASKS_TIMEOUT_S)
                dump_tasks()
            await asyncio.shield(self._shutdown())
        return 0

    # --- the read model for the API, Home Assistant and the metrics -----------------------------

    def view(self) -> SiteView:
        """One read of the site for the API, Home Assistant and the metrics (zapd/siteview.py). The
        metrics call it from prometheus-client's thread: it only reads plain attributes."""
        now = self.clock.now()
        latest = self.state.latest()
        rejected = dict(self.cloud.fetcher.rejected) if self.cloud is not None else {}
        if self.plan_file is not None and self.plan_file.rejected:
            rejected["plan_file"] = self.plan_file.rejected
        return SiteView(
            now=now,
            site_id=self.config.site.id,
            snapshot=self.state.snapshot(now),
            control=ControlView.of(self.controller.stats if self.controller is not None else None),
            override=self.override.active(),
            plan=self.current_plan(),
            kinds=dict(self.devices.kinds),
            drivers=tuple(self.devices.drivers),
            capacities_wh={c.der_id: c.capacity_wh for d in self.devices.drivers for c in d.capabilities()},
            plans_rejected=rejected,
            sync=self._sync_gauges,
            readings_in=self.readings_in,
            energy_kwh={total: self.energy.kwh(total) for total in TOTALS},
            latest=latest,
            fresh=frozenset(der for der in latest if self.state.is_fresh(der, now)),
            tasks={name: dataclasses.replace(h) for name, h in self.supervisor.health.items()},
            readings_written=self.telemetry.written if self.telemetry is not None else 0,
        )

    async def _refresh_sync_gauges(self) -> None:
        assert self.store is not None
        while True:
            depth = await self.store.outbox_depth()
            oldest = await self.store.oldest_unacked_ts()
            lag = max(0.0, (self.clock.now() - oldest).total_seconds()) if oldest is not None else 0.0
            acks = dict(self.cloud.uploader.acks_rejected) if self.cloud is not None else {}
            channel = self.cloud.channel if self.cloud is not None else None
            self._sync_gauges = SyncGauges(
                outbox_depth=depth,
                sync_lag_s=lag,
                acks_rejected=acks,
                channel_up=channel is not None and channel.state == "up",
                channel_refused=dict(channel.refused) if channel is not None else {},
            )
            await asyncio.sleep(5.0)

    async def _report_devices(self) -> None:
        """Log what each device showed it can do, once at start and again whenever that changes
        (a device that was down at start is reported when its first probe succeeds)."""
        reported: dict[str, DerCapabilities] = {}
        while True:
            for driver in self.devices.drivers:
                for cap in driver.capabilities():
                    if reported.get(cap.der_id) != cap:
                        reported[cap.der_id] = cap
                        log.info(
                            "daemon.device_discovered",
                            device=driver.name,
                            der_id=cap.der_id,
                            kind=cap.kind.value,
                            model=cap.model,
                            controllable=cap.controllable,
                            max_charge_w=cap.max_charge_w,
                            max_discharge_w=cap.max_discharge_w,
                            capacity_wh=cap.capacity_wh,
                        )
            await asyncio.sleep(5.0)

    async def _run_controller(self) -> None:
        assert self.controller is not None
        await self.controller.run()

    async def _shutdown(self) -> None:
        """Bounded cleanup: safe devices first, then the data."""
        if self.controller is not None:
            try:
                async with asyncio.timeout(SAFE_MODE_TIMEOUT_S):
                    await self.controller.safe_mode()
            except TimeoutError:
                log.error("controller.safe_mode_timeout")
        if self.telemetry is not None:
            try:
                await self.telemetry.flush()
            except Exception as exc:
                log.error("telemetry.flush_failed", error=str(exc))
        if self.store is not None and self.energy.loaded:
            await self.energy.save(self.store)
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.close)
        if self.cloud is not None:
            await self.cloud.close()
        if self.store is not None:
            await self.store.close()
        log.info("daemon.stopped")
