"""OpenMetrics for Prometheus on localhost: what a fleet operator graphs and alerts on.

The collector asks the daemon for one `SiteView` per scrape (from prometheus-client's HTTP
thread; building it reads plain attributes), so it never touches the event loop or the
database; values that need the database (outbox depth) are refreshed by a small task in the
daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from drivers.api import Driver, HasHealth
from drivers.health import HealthState
from zapd.siteview import SiteView, SyncGauges

# P1 driver counters that mean "a telegram came in and was thrown away".
TELEGRAM_REJECTIONS = ("bad_crc", "parse_error", "decrypt_error", "overflow")
# Driver counters that mean "something went wrong talking to the device".
DRIVER_ERRORS = (
    "link_errors", "poll_errors", "probe_errors", "config_errors", "command_errors", "commands_refused",
    "bad_payloads", "errors",
)  # fmt: skip


__all__ = ["DaemonCollector", "MetricsServer", "SyncGauges"]


class DaemonCollector(Collector):
    """Reads one `SiteView` per scrape (zapd/siteview.py), so a scrape's numbers belong together."""

    def __init__(self, view: Callable[[], SiteView]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        src = self._view()
        rejected = CounterMetricFamily(
            "zapd_telegrams_rejected", "Meter telegrams dropped (bad CRC, unparsable, undecryptable)",
            labels=["device", "reason"],
        )  # fmt: skip
        errors = CounterMetricFamily(
            "zapd_driver_errors", "Device errors by device and kind", labels=["device", "kind"]
        )
        events = CounterMetricFamily("zapd_driver_events", "Every driver counter", labels=["device", "event"])
        for driver in list(src.drivers):
            counters: dict[str, int] = getattr(driver, "counters", {})
            for name, value in sorted(counters.items()):
                events.add_metric([driver.name, name], value)
                if name in TELEGRAM_REJECTIONS:
                    rejected.add_metric([driver.name, name], value)
                if name in DRIVER_ERRORS:
                    errors.add_metric([driver.name, name], value)
        yield rejected
        yield errors
        yield events
        yield from _device_health(list(src.drivers))

        plans = CounterMetricFamily("zapd_plans_rejected", "Plans refused by verification", labels=["reason"])
        for reason, count in sorted(src.plans_rejected.items()):
            plans.add_metric([reason], count)
        yield plans

        sync = src.sync
        yield GaugeMetricFamily("zapd_outbox_depth", "Readings stored and not yet acknowledged by the cloud",
                                value=sync.outbox_depth)  # fmt: skip
        yield GaugeMetricFamily("zapd_sync_lag_seconds", "Age of the oldest unacknowledged reading",
                                value=sync.sync_lag_s)  # fmt: skip
        acks = CounterMetricFamily("zapd_telemetry_acks_rejected",
                                   "Cloud answers to uploads refused (unsigned, out of range); nothing deleted",
                                   labels=["reason"])  # fmt: skip
        for reason, count in sorted(sync.acks_rejected.items()):
            acks.add_metric([reason], count)
        yield acks
        yield GaugeMetricFamily("zapd_channel_up", "1 while the live channel to the cloud is connected",
                                value=int(sync.channel_up))  # fmt: skip
        refused = CounterMetricFamily("zapd_channel_messages_refused",
                                      "Live-channel messages refused (forged, expired, replayed, other site, "
                                      "oversize, malformed); nothing applied", labels=["reason"])  # fmt: skip
        for reason, count in sorted(sync.channel_refused.items()):
            refused.add_metric([reason], count)
        yield refused

        c = src.control
        cycles, last_ms, writes, failures = c.cycles, c.last_cycle_ms, c.writes, c.write_failures
        yield CounterMetricFamily("zapd_control_cycles", "Control cycles run", value=cycles)
        yield GaugeMetricFamily(
            "zapd_control_loop_duration_seconds", "Duration of the last control cycle", value=last_ms / 1000
        )
        yield CounterMetricFamily("zapd_commands_written", "Device commands written", value=writes)
        yield CounterMetricFamily("zapd_command_failures", "Device commands that failed", value=failures)
        rung = c.rung.level if c.rung is not None else None
        yield GaugeMetricFamily(
            "zapd_fallback_rung", "1 plan, 2 cached plan, 3 self-consumption, 4 safe hold (0 = not yet decided)",
            value=rung or 0,
        )  # fmt: skip
        yield CounterMetricFamily("zapd_readings", "Readings received from all drivers", value=src.readings_in)


def _device_health(drivers: list[Driver]) -> Iterator[Metric]:
    """Per device: does it answer (1/0), which state it is in (one series per state, 1 for the current
    one: alert on `zapd_device_state{state="unreachable"} == 1`), and the errors its record counted."""
    up = GaugeMetricFamily("zapd_device_up", "1 while the device answers as it should, else 0", labels=["device"])
    state = GaugeMetricFamily(
        "zapd_device_state", "1 for the device's current health state", labels=["device", "state"]
    )
    since = GaugeMetricFamily(
        "zapd_device_state_since_seconds", "Unix time the current health state began", labels=["device"]
    )
    errors = CounterMetricFamily("zapd_device_health_errors", "Failures the health record counted", labels=["device"])
    for driver in drivers:
        if not isinstance(driver, HasHealth):
            continue
        view = driver.health.view()
        up.add_metric([driver.name], 1.0 if view.ok else 0.0)
        for s in HealthState:
            state.add_metric([driver.name, str(s)], 1.0 if view.state is s else 0.0)
        if view.since is not None:
            since.add_metric([driver.name], view.since.timestamp())
        errors.add_metric([driver.name], view.errors)
    yield up
    yield state
    yield since
    yield errors


class MetricsServer:
    """prometheus-client's own HTTP server in a thread; closed when the daemon stops."""

    def __init__(self, view: Callable[[], SiteView], host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(view))
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
