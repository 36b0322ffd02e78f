"""The store on a real SQLite file: migrations, outbox order, acks, retention, plans, command log."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from zapd.model import BatterySetpoint, CommandResult, DerKind, Intent, Plan, PlanSlot, Reading
from zapd.store import MIGRATIONS, Store

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


def reading(i: int) -> Reading:
    return Reading(der_id="m", kind=DerKind.METER, ts=T0 + timedelta(seconds=i), values={"power_w": float(i)})


async def test_migrations_wal_and_durability(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "zapd.sqlite")
    assert await store.schema_version() == len(MIGRATIONS)
    await store.close()
    raw = sqlite3.connect(tmp_path / "zapd.sqlite")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    # Reopening does not migrate again.
    store = await Store.open(tmp_path / "zapd.sqlite")
    assert await store.schema_version() == len(MIGRATIONS)
    assert await store.integrity_check() == "ok"
    await store.close()


async def test_outbox_sequence_ack_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "zapd.sqlite"
    store = await Store.open(path)
    assert await store.append_readings([reading(i) for i in range(10)]) == 10
    rows = await store.outbox_after(0, 4)
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert rows[2].reading() == reading(2)
    await store.ack_through(4)
    assert await store.outbox_depth() == 6
    await store.close()
    # After a restart: acked position kept, sequence keeps growing even though rows were deleted.
    store = await Store.open(path)
    assert await store.acked_seq() == 4
    assert [r.seq for r in await store.outbox_after(await store.acked_seq(), 100)] == list(range(5, 11))
    await store.ack_through(10)
    assert await store.append_readings([reading(99)]) == 11
    await store.ack_through(3)  # an old ack never moves backwards
    assert await store.acked_seq() == 10
    await store.close()


async def test_retention_counts_what_it_drops(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "zapd.sqlite")
    await store.append_readings([reading(i) for i in range(100)])
    dropped = await store.enforce_retention(T0 + timedelta(seconds=30))
    assert dropped == 30
    dropped = await store.enforce_retention(T0, max_rows=50)
    assert dropped == 20
    assert await store.kv_get("sync.dropped_by_retention") == "50"
    assert [r.seq for r in await store.outbox_after(0, 1)] == [51]
    await store.close()


async def test_plans_and_commands(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "zapd.sqlite")
    assert await store.latest_plan() is None
    for version in (1, 2):
        plan = Plan(
            site_id="s",
            version=version,
            issued_at=T0,
            valid_until=T0 + timedelta(hours=1),
            slots=(PlanSlot(start=T0, end=T0 + timedelta(hours=1), intent=Intent(battery_w=500.0)),),
        )
        await store.save_plan(plan, msgspec.json.encode(plan), "sig", T0)
    latest = await store.latest_plan()
    assert latest is not None and latest.plan.version == 2 and latest.signature == "sig"
    result = CommandResult(command=BatterySetpoint(der_id="b", power_w=-100.0), ok=True, detail="read back")
    await store.log_commands(T0, [(result, "reserve SoC")])
    (row,) = await store.recent_commands()
    assert row.der_id == "b" and row.clamped_reason == "reserve SoC" and row.ok
    await store.add_event(T0, "fallback", "self_consumption: no plan")
    assert (await store.events("fallback"))[0].detail == "self_consumption: no plan"
    await store.close()
