"""Request counters for `GET /metrics` (Prometheus text format).

These are the one piece of process state: counters are per worker by nature, and a
Prometheus scrape of each worker sums them, so keeping them out of the DB loses nothing.
"""

from __future__ import annotations

from collections import Counter

# Weather forecasts the planner loop could not use, by reason (cloud/planner.py `_weather`): process-wide,
# because the planner loop is one per process and has no app to hold a Metrics.
WEATHER_FAILURES: Counter[str] = Counter()
# Sites whose registration (location, arrays) disagrees strongly with their measured PV, by kind (`solar_noon`,
# `kwp`; cloud/planner.py `_check_pv_registration`): counted once per site and day, like its log line.
PV_REGISTRATION_MISMATCH: Counter[str] = Counter()


class Metrics:
    def __init__(self) -> None:
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.accepted: Counter[str] = Counter()
        self.connections_refused: Counter[str] = Counter()
        self.channel_events: Counter[tuple[str, str]] = Counter()
        self.channel_open = 0  # live channels on this worker (a gauge)
        self.live_subscriptions = 0  # GraphQL telemetry subscriptions streaming from this worker (a gauge)

    def reject(self, endpoint: str, reason: str) -> None:
        self.rejected[(endpoint, reason)] += 1

    def accept(self, endpoint: str) -> None:
        self.accepted[endpoint] += 1

    def connection_refused(self, reason: str) -> None:
        """A connection closed before it made a request (connection cap, header deadline)."""
        self.connections_refused[reason] += 1

    def channel(self, side: str, reason: str) -> None:
        """A live-channel event: refused frames and connections by reason (`side` is who refused)."""
        self.channel_events[(side, reason)] += 1

    def render(self) -> str:
        lines = [
            "# HELP zapcloud_requests_rejected_total Requests refused, by endpoint and reason.",
            "# TYPE zapcloud_requests_rejected_total counter",
        ]
        for (endpoint, reason), n in sorted(self.rejected.items()):
            lines.append(f'zapcloud_requests_rejected_total{{endpoint="{endpoint}",reason="{reason}"}} {n}')
        lines += [
            "# HELP zapcloud_requests_accepted_total Requests served successfully, by endpoint.",
            "# TYPE zapcloud_requests_accepted_total counter",
        ]
        for endpoint, n in sorted(self.accepted.items()):
            lines.append(f'zapcloud_requests_accepted_total{{endpoint="{endpoint}"}} {n}')
        lines += [
            "# HELP zapcloud_connections_refused_total Connections closed before a request, by reason.",
            "# TYPE zapcloud_connections_refused_total counter",
        ]
        for reason, n in sorted(self.connections_refused.items()):
            lines.append(f'zapcloud_connections_refused_total{{reason="{reason}"}} {n}')
        lines += [
            "# HELP zapcloud_channel_events_total Live-channel refusals and events, by reason.",
            "# TYPE zapcloud_channel_events_total counter",
        ]
        for (side, reason), n in sorted(self.channel_events.items()):
            lines.append(f'zapcloud_channel_events_total{{side="{side}",reason="{reason}"}} {n}')
        lines += [
            "# HELP zapcloud_channel_connections Live channels held by this worker.",
            "# TYPE zapcloud_channel_connections gauge",
            f"zapcloud_channel_connections {self.channel_open}",
            "# HELP zapcloud_live_subscriptions GraphQL telemetry subscriptions streaming from this worker.",
            "# TYPE zapcloud_live_subscriptions gauge",
            f"zapcloud_live_subscriptions {self.live_subscriptions}",
            "# HELP zapcloud_weather_failures_total Weather forecasts the planner could not use, by reason.",
            "# TYPE zapcloud_weather_failures_total counter",
        ]
        for reason, n in sorted(WEATHER_FAILURES.items()):
            lines.append(f'zapcloud_weather_failures_total{{reason="{reason}"}} {n}')
        lines += [
            "# HELP zapcloud_pv_registration_mismatch_total Site-days whose registered PV disagrees with its"
            " measurements, by kind.",
            "# TYPE zapcloud_pv_registration_mismatch_total counter",
        ]
        for kind, n in sorted(PV_REGISTRATION_MISMATCH.items()):
            lines.append(f'zapcloud_pv_registration_mismatch_total{{kind="{kind}"}} {n}')
        return "\n".join(lines) + "\n"
