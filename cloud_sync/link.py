"""The Zap's view of its cloud link, shared by the uploader and the plan fetcher.

Both report success and failure here; the link state changes (down, up again) are logged
once each, and `zapctl status` reads the same object. The link is "up" only while no part
fails: a plan fetch that works does not make the link look up while the cloud's telemetry
answers are refused (issue 10: a forged ACK left the link "up").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import structlog

log = structlog.get_logger(__name__)


@dataclass
class LinkStatus:
    state: str = "unknown"  # unknown | up | down
    since: datetime | None = None
    last_error: str = ""
    last_upload: datetime | None = None
    last_plan_fetch: datetime | None = None
    uploaded_readings: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    failing: dict[str, str] = field(default_factory=dict)  # part -> its last error, while it fails

    def ok(self, now: datetime, what: str = "") -> None:
        self.failing.pop(what, None)
        if self.failing:
            return  # another part still fails: the link is not up
        if self.state != "up":
            log.info(
                "cloud_sync.link_up", previous=self.state, down_since=self.since.isoformat() if self.since else None
            )
            self.state = "up"
            self.since = now
            self.last_error = ""

    def failed(self, now: datetime, what: str, error: str) -> None:
        self.failures[what] = self.failures.get(what, 0) + 1
        self.failing[what] = error
        self.last_error = f"{what}: {error}"
        if self.state != "down":
            log.warning("cloud_sync.link_down", what=what, error=error)
            self.state = "down"
            self.since = now

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "since": self.since.isoformat() if self.since else None,
            "last_error": self.last_error,
            "last_upload": self.last_upload.isoformat() if self.last_upload else None,
            "last_plan_fetch": self.last_plan_fetch.isoformat() if self.last_plan_fetch else None,
            "uploaded_readings": self.uploaded_readings,
            "failures": dict(self.failures),
            "failing": sorted(self.failing),
        }
