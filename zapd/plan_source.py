"""Where the controller's plan comes from: one `PlanSource` protocol for the cloud's plan
(cloud_sync/session.py `CloudSync`) and a local plan file, so the daemon asks each the same two
questions in order of preference (issue 15: the file and the cloud were two special cases).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Protocol

import msgspec
import structlog

from cloud_sync.wire import intent_problem
from zapd.model import Plan

log = structlog.get_logger(__name__)


class PlanSource(Protocol):
    """A source of signed-or-trusted plans the controller may follow."""

    def plan(self) -> Plan | None:
        """The plan this source holds now (verified, newest accepted), or None."""
        ...

    def fresh(self, now: datetime) -> bool:
        """Whether the source has been heard from recently enough to trust its plan as current."""
        ...


class LocalPlanFile:
    """A plan from a JSON file (until the cloud supplies one); reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime: float | None = None
        self._plan: Plan | None = None
        self.rejected = 0

    def fresh(self, now: datetime) -> bool:
        return True  # a local plan file is as fresh as the installer made it

    def plan(self) -> Plan | None:
        return self.poll()

    def poll(self) -> Plan | None:
        try:
            mtime = self._path.stat().st_mtime
        except OSError:
            return self._plan
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
                return self._plan
            if self._plan is None or plan.version >= self._plan.version:
                self._plan = plan
                log.info("plan.file_loaded", path=str(self._path), version=plan.version, slots=len(plan.slots))
        return self._plan
