"""Long-lived tasks in one TaskGroup; a crashed task is restarted with capped backoff.

Each task's state changes (crashed, recovered) are logged once, not on every retry, so a
device that stays broken for a day does not flood the journal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from drivers.resilience import Backoff

log = structlog.get_logger(__name__)

TaskFactory = Callable[[], Awaitable[None]]


@dataclass
class TaskHealth:
    name: str
    restarts: int = 0
    failing: bool = False
    last_error: str = ""


class Supervisor:
    def __init__(
        self, *, initial_backoff_s: float = 0.5, max_backoff_s: float = 60.0, healthy_after_s: float = 10.0
    ) -> None:
        self._healthy_after = healthy_after_s
        self._factories: dict[str, TaskFactory] = {}
        self._initial = initial_backoff_s
        self._max = max_backoff_s
        self.health: dict[str, TaskHealth] = {}

    def add(self, name: str, factory: TaskFactory) -> None:
        self._factories[name] = factory
        self.health[name] = TaskHealth(name)

    async def run(self) -> None:
        """Run every task until cancelled (the daemon cancels this on SIGTERM)."""
        async with asyncio.TaskGroup() as tg:
            for name, factory in self._factories.items():
                tg.create_task(self._keep_running(name, factory), name=name)

    async def _keep_running(self, name: str, factory: TaskFactory) -> None:
        health = self.health[name]
        backoff = Backoff(self._initial, max(self._initial, self._max))
        while True:
            loop = asyncio.get_running_loop()
            started = loop.time()
            task = asyncio.ensure_future(factory())
            if health.failing:
                # Still running after a while: call it recovered (logged once).
                loop.call_later(self._healthy_after, self._mark_if_running, name, task)
            try:
                await task
                error = "returned unexpectedly"
            except asyncio.CancelledError:
                task.cancel()
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if not health.failing:
                    log.exception("supervisor.task_crashed", task=name, error=error)
            if not health.failing:
                if error == "returned unexpectedly":
                    log.error("supervisor.task_crashed", task=name, error=error)
                health.failing = True
            health.restarts += 1
            health.last_error = error
            if loop.time() - started > 60:
                backoff.reset()  # it ran well for a while: start the backoff again
            await asyncio.sleep(backoff.next_delay())

    def _mark_if_running(self, name: str, task: asyncio.Future[None]) -> None:
        if not task.done():
            self.mark_healthy(name)

    def mark_healthy(self, name: str) -> None:
        """A task calls this once it works again, so recovery is logged once."""
        health = self.health.get(name)
        if health is not None and health.failing:
            health.failing = False
            log.info("supervisor.task_recovered", task=name, restarts=health.restarts)
