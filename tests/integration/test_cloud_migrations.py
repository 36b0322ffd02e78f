"""The schema under migrations, on a SQLite file and a real PostgreSQL: workers that start together on an
empty database all come up (the migration lock), `zapcloud db upgrade` re-creates a missing index and
adopts a database made before migrations, `zapcloud db check` names what differs from the models."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select

from cloud import db as schema
from cloud.db import Database
from cloud.server.migrate import MIGRATIONS, alembic_config, head_revision, upgrade
from tests.cloud_server import REPO, cloud_env, serve_cmd
from tests.db_backends import BACKENDS, empty_db_url
from tests.ports import free_port
from tests.waiting import wait_until_sync

# PostgreSQL raced on CREATE TABLE before the lock (the second worker died in 3 of 4 tries).
ROUNDS = {"sqlite": 2, "postgresql": 5}


def zapcloud_db(action: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", "db", action, "--db", url],
        capture_output=True, text=True, env=cloud_env(), cwd=REPO, timeout=60,
    )  # fmt: skip


def indexes(url: str, table: str) -> set[str]:
    async def run() -> set[str]:
        db = Database(url)
        try:
            async with db.engine.connect() as conn:
                found = await conn.run_sync(lambda c: inspect(c).get_indexes(table))
            return {str(ix["name"]) for ix in found}
        finally:
            await db.dispose()

    return asyncio.run(run())


def _workers_up(
    procs: list[subprocess.Popen[bytes]], ports: list[int], logs: list[Path], up: list[bool], label: str
) -> bool:
    """Ask each worker not yet healthy for /healthz; `up` keeps what answered. A worker that exited fails."""
    for i, (proc, port) in enumerate(zip(procs, ports, strict=True)):
        assert proc.poll() is None, f"{label}: worker {i} exited {proc.returncode}:\n" + logs[i].read_text()
        with contextlib.suppress(httpx.TransportError):
            up[i] = up[i] or httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    return all(up)


@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_started_together_on_an_empty_database_all_come_up(backend: str, tmp_path: Path) -> None:
    for attempt in range(ROUNDS[backend]):
        url = empty_db_url(backend, tmp_path, f"w{attempt}")
        ports = [free_port(), free_port()]
        logs = [tmp_path / f"w{attempt}-{i}.log" for i in range(2)]
        procs = []
        for port, log in zip(ports, logs, strict=True):
            with log.open("wb") as out:
                cmd = serve_cmd(port, url, tmp_path / "cloud.key", "--no-planner")
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=cloud_env(), cwd=REPO))
        try:
            up = [False, False]
            try:
                up_now = functools.partial(_workers_up, procs, ports, logs, up, f"round {attempt}")
                wait_until_sync(up_now, 40, "both workers healthy", every_s=0.1)
            except AssertionError as exc:
                raise AssertionError(
                    f"round {attempt}: not up {up}: {exc}\n" + "\n".join(log.read_text() for log in logs)
                ) from None
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=15)
        result = zapcloud_db("current", url)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_db_upgrade_recreates_a_missing_index(backend: str, tmp_path: Path) -> None:
    url = empty_db_url(backend, tmp_path)
    first = zapcloud_db("upgrade", url)
    assert first.returncode == 0, first.stderr
    assert f"revision {head_revision()}" in first.stdout
    assert "ix_telemetry_site_ts" in indexes(url, "telemetry")
    # The revisions make exactly the models: a table added without its revision fails here.
    clean = zapcloud_db("check", url)
    assert clean.returncode == 0, clean.stdout

    async def drop() -> None:
        db = Database(url)
        try:
            async with db.engine.begin() as conn:
                await conn.exec_driver_sql("DROP INDEX ix_telemetry_site_ts")
        finally:
            await db.dispose()

    asyncio.run(drop())
    check = zapcloud_db("check", url)
    assert check.returncode == 1 and "add_index ix_telemetry_site_ts" in check.stdout, check.stdout
    again = zapcloud_db("upgrade", url)
    assert again.returncode == 0, again.stderr
    assert "ix_telemetry_site_ts" in indexes(url, "telemetry")
    assert zapcloud_db("check", url).returncode == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_from_before_migrations_is_adopted(backend: str, tmp_path: Path) -> None:
    """Made by the old start (`create_all`) at a time its telemetry index did not exist; its rows stay."""
    url = empty_db_url(backend, tmp_path)

    async def make() -> None:
        # The tables of that time (revision 0002: what `create_all` made on main before migrations), made
        # without the telemetry index and with no alembic_version.
        db = Database(url)
        try:
            await upgrade(db, "0002")
            async with db.engine.begin() as conn:
                await conn.exec_driver_sql("DROP TABLE alembic_version")
                await conn.exec_driver_sql("DROP INDEX ix_telemetry_site_ts")
            await db.upsert_site("old1", "k" * 43, "kid1", now=datetime(2026, 1, 1, tzinfo=UTC))
        finally:
            await db.dispose()

    asyncio.run(make())
    assert "ix_telemetry_site_ts" not in indexes(url, "telemetry")
    result = zapcloud_db("upgrade", url)
    assert result.returncode == 0, result.stderr
    assert f"revision {head_revision()} (was None)" in result.stdout
    assert "ix_telemetry_site_ts" in indexes(url, "telemetry")

    async def sites() -> list[str]:
        db = Database(url)
        try:
            async with db.engine.connect() as conn:
                return list((await conn.execute(select(schema.sites.c.site_id))).scalars())
        finally:
            await db.dispose()

    assert asyncio.run(sites()) == ["old1"]
    assert zapcloud_db("check", url).returncode == 0


def test_revisions_form_one_line() -> None:
    """Two engineers adding revision N each give two heads and a start that fails: renumber before merging."""
    script = ScriptDirectory.from_config(alembic_config())
    revisions = list(script.walk_revisions())
    assert len(script.get_heads()) == 1, script.get_heads()
    files = sorted(p.name for p in (MIGRATIONS / "versions").glob("[0-9]*.py"))
    assert len(files) == len(revisions)
    assert [r.revision for r in reversed(revisions)] == [f.split("_", 1)[0] for f in files]
