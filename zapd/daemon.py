"""`zapd run`: wires config, store, drivers, controller and the supervisor into one process.

Shutdown on SIGTERM/SIGINT: stop the tasks, put controllable devices in their safe mode
(shielded and time-limited), flush queued telemetry to the store, tell systemd, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import sqlite3
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import structlog

from cloud_sync.wire import intent_problem, wire_safe
from drivers.api import Driver, ReadingGuard
from drivers.resilience import FailureLatch
from zapd.api import LocalApi
from zapd.clock import Clock
from zapd.config import ZapdConfig, meter_ders
from zapd.controller import Controller
from zapd.devices import DeviceSet, build_devices
from zapd.energy import EnergyTotals
from zapd.envelope import BatteryEnvelope, SiteLimits
from zapd.metrics import SyncGauges
from zapd.model import DerCapabilities, Plan, Reading
from zapd.override import OperatorOverride
from zapd.sdnotify import Notifier
from zapd.state import SiteState
from zapd.store import Store
from zapd.supervisor import Supervisor

if TYPE_CHECKING:  # imported where the config asks for them: a site pays only for what it runs
    from cloud_sync.session import CloudSync
    from zapd.homeassistant import HomeAssistant
    from zapd.metrics import MetricsServer

log = structlog.get_logger(__name__)

TELEMETRY_FLUSH_S = 1.0  # real seconds: one transaction (one fsync) per second at most
MAX_PENDING = 200_000  # readings held in memory while the store fails: ~3 h of a 10-device site
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


class TelemetryWriter:
    """Queues readings from the drivers and appends them to the outbox in batches.

    When the store cannot take them (disk full, I/O error) they stay queued in memory, up to
    MAX_PENDING; past that the oldest are dropped and counted, the same rule as the outbox's
    retention, so a disk that stays full cannot take the daemon's memory with it.
    """

    def __init__(self, store: Store, *, max_pending: int = MAX_PENDING) -> None:
        self._store = store
        self._pending: list[Reading] = []
        self._max_pending = max_pending
        self._latch = FailureLatch(log, "telemetry.store_failed", "telemetry.store_recovered")
        self._in_flight = 0
        self.written = 0
        self.dropped = 0
        self.refused = 0  # readings not stored because the cloud would refuse them (timestamp out of bounds)

    @property
    def pending(self) -> int:
        """Readings not in the store yet, including a batch being written right now."""
        return len(self._pending) + self._in_flight

    def add(self, reading: Reading) -> None:
        # Nothing goes into the outbox that the cloud refuses (cloud_sync/wire.py applies the same
        # rule on ingest): a batch holding one such reading would be refused whole, again and again.
        safe = wire_safe(reading)
        if safe is None:
            if not self.refused:
                log.error("telemetry.refused", der_id=reading.der_id, ts=reading.ts.isoformat(), reason="timestamp")
            self.refused += 1
            return
        self._pending.append(safe)
        if len(self._pending) > self._max_pending:
            excess = len(self._pending) - self._max_pending
            del self._pending[:excess]
            if not self.dropped:
                log.error("telemetry.dropped_in_memory", reason="store failing and queue full", limit=self._max_pending)
            self.dropped += excess

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self._in_flight = len(batch)
        try:
            await self._store.append_readings(batch)
        except Exception:
            self._pending[:0] = batch  # keep them for the next try (e.g. disk full)
            raise
        finally:
            self._in_flight = 0
        self.written += len(batch)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TELEMETRY_FLUSH_S)
            try:
                await self.flush()
            except (sqlite3.Error, OSError) as exc:
                # Logged once per failure streak; control must go on, and the readings wait in memory.
                self._latch.failed(error=str(exc), pending=len(self._pending))
                continue
            self._latch.ok(written=self.written, dropped_in_memory=self.dropped)


class LocalPlanFile:
    """A plan from a JSON file (until the cloud supplies one); reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime: float | None = None
        self.plan: Plan | None = None
        self.rejected = 0

    def poll(self) -> Plan | None:
        try:
            mtime = self._path.stat().st_mtime
        except OSError:
            return self.plan
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                plan = msgspec.json.decode(self._path.read_bytes(), type=Plan)
                # The same numbers rule as a cloud plan: an intent that is not a number is refused, not run.
                problem = next((p for p in (intent_problem(s.intent) for s in plan.slots) if p is not None), None)
                if problem is not None:
                    raise ValueError(problem)
            except (OSError, ValueError, msgspec.ValidationError, msgspec.DecodeError) as exc:
                self.rejected += 1
                log.warning("plan.file_rejected", path=str(self._path), error=str(exc))
                return self.plan
            if self.plan is None or plan.version >= self.plan.version:
                self.plan = plan
                log.info("plan.file_loaded", path=str(self._path), version=plan.version, slots=len(plan.slots))
        return self.plan


def battery_envelopes(devices: DeviceSet) -> list[BatteryEnvelope]:
    """Config limits override the nameplate the driver probed; missing both means "cannot move"."""
    caps = {c.der_id: c for d in devices.drivers for c in d.capabilities()}
    out = []
    for der_id, limits in devices.battery_limits.items():
        cap = caps.get(der_id)
        out.append(
            BatteryEnvelope(
                der_id=der_id,
                capacity_wh=limits.capacity_wh or (cap.capacity_wh if cap else 0.0),
                max_charge_w=min(x for x in (limits.max_charge_w, cap.max_charge_w if cap else None) if x is not None)
                if (limits.max_charge_w is not None or cap is not None)
                else 0.0,
                max_discharge_w=min(
                    x for x in (limits.max_discharge_w, cap.max_discharge_w if cap else None) if x is not None
                )
                if (limits.max_discharge_w is not None or cap is not None)
                else 0.0,
                reserve_soc=limits.reserve_soc,
                max_soc=limits.max_soc,
            )
        )
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
        self.api = LocalApi(self, self.override)  # local control API (zapctl); see docs/local-api.md
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

    def current_plan(self) -> Plan | None:
        """The cloud's plan when there is one, else the local plan file's."""
        if self.cloud is not None and self.cloud.plan() is not None:
            return self.cloud.plan()
        return self.plan_file.poll() if self.plan_file else None

    def plan_fresh(self) -> bool:
        if self.cloud is None:
            return True  # a local plan file is as fresh as the installer made it
        return self.cloud.fresh(self.clock.now())

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

    def _capabilities(self) -> list[DerCapabilities]:
        """What the drivers found, with each meter's configured role (the cloud plans on the grid meter's data)."""
        roles = {m.der_id: m.role for m in meter_ders(self.config.devices)}
        return [
            msgspec.structs.replace(c, role=roles[c.der_id]) if c.der_id in roles else c
            for d in self.devices.drivers
            for c in d.capabilities()
        ]

    def _on_cycle(self) -> None:
        self.notifier.ready(status="controlling")
        self.notifier.watchdog()

    async def _retention(self) -> None:
        assert self.store is not None
        latch = FailureLatch(log, "telemetry.retention_failed", "telemetry.retention_recovered")
        while True:
            cutoff = self.clock.now() - timedelta(days=self.config.store.retention_days)
            # Budget by bytes: ~150 B per stored reading.
            max_rows = int(self.config.store.retention_mb * 1024 * 1024 / 150)
            try:
                dropped = await self.store.enforce_retention(cutoff, max_rows)
            except (sqlite3.Error, OSError) as exc:
                # Disk full: nothing was dropped (rolled back); retention tries again next round.
                latch.failed(error=str(exc))
            else:
                latch.ok()
                if dropped:
                    log.warning("telemetry.dropped_by_retention", count=dropped)
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
            await self.cloud.fetcher.load_cached()
        self.telemetry = TelemetryWriter(self.store)
        await self.energy.load(self.store)  # before the first reading counts: a total never goes down
        for der_id, kind in self.devices.kinds.items():
            self.state.register(der_id, kind, self.devices.poll_s[der_id])
        self.controller = Controller(
            clock=self.clock,
            state=self.state,
            store=self.store,
            batteries=lambda: battery_envelopes(self.devices),
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
            evs=lambda: self.devices.ev_envelopes,
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
                self._metrics = MetricsServer(self, metrics.host, metrics.port)
                log.info("metrics.listening", host=metrics.host, port=metrics.port)
            except OSError as exc:
                log.error("metrics.unavailable", host=metrics.host, port=metrics.port, error=str(exc))
        self.supervisor.add("api", self.api.serve)
        if self.config.home_assistant.enabled:
            from zapd.homeassistant import HomeAssistant

            self.home_assistant = HomeAssistant(self, self.config.home_assistant)
            self.supervisor.add("home_assistant", self.home_assistant.run)
        if self.cloud is not None:
            self.supervisor.add("uploader", self.cloud.uploader.run)
            self.supervisor.add("plan_fetcher", self.cloud.fetcher.run)
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

    # --- metrics (read from prometheus-client's thread: plain attributes only) -------------------

    def metric_drivers(self) -> list[Driver]:
        return list(self.devices.drivers)

    def metric_rung(self) -> int | None:
        rung = self.controller.stats.rung if self.controller is not None else None
        return int(rung) if rung is not None else None

    def metric_control(self) -> tuple[int, float, int, int]:
        if self.controller is None:
            return 0, 0.0, 0, 0
        st = self.controller.stats
        return st.cycles, st.last_cycle_ms, st.writes, st.write_failures

    def metric_plans_rejected(self) -> dict[str, int]:
        rejected = dict(self.cloud.fetcher.rejected) if self.cloud is not None else {}
        if self.plan_file is not None and self.plan_file.rejected:
            rejected["plan_file"] = self.plan_file.rejected
        return rejected

    def metric_sync(self) -> SyncGauges:
        return self._sync_gauges

    def metric_readings_in(self) -> int:
        return self.readings_in

    async def _refresh_sync_gauges(self) -> None:
        assert self.store is not None
        while True:
            depth = await self.store.outbox_depth()
            oldest = await self.store.oldest_unacked_ts()
            lag = max(0.0, (self.clock.now() - oldest).total_seconds()) if oldest is not None else 0.0
            acks = dict(self.cloud.uploader.acks_rejected) if self.cloud is not None else {}
            self._sync_gauges = SyncGauges(outbox_depth=depth, sync_lag_s=lag, acks_rejected=acks)
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
