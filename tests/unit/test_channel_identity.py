"""The channel hello's one lookup (Database.channel_identity) on a real SQLite file: the registered key,
its id and the newest plan version, or None for a site that is not registered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from nacl.signing import SigningKey

from cloud.db import Database
from cloud.db.database import StoredPlan
from cloud_sync.keys import key_id, public_key_b64

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


async def test_the_hello_lookup_gives_key_key_id_and_newest_plan(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'cloud.sqlite'}")
    try:
        await db.create_schema()
        a, b = SigningKey.generate(), SigningKey.generate()
        await db.upsert_site("site-a", public_key_b64(a), key_id(a), now=NOW)
        await db.upsert_site("site-b", public_key_b64(b), key_id(b), now=NOW)
        assert await db.channel_identity("site-a") == (public_key_b64(a), key_id(a), None)
        for site, version in (("site-a", 1), ("site-a", 3), ("site-b", 7)):
            await db.insert_plan(StoredPlan(site, version, b"{}", "sig", NOW, NOW + timedelta(hours=1)))
        assert await db.channel_identity("site-a") == (public_key_b64(a), key_id(a), 3)  # its own, newest
        assert await db.channel_identity("site-b") == (public_key_b64(b), key_id(b), 7)
        assert await db.channel_identity("site-c") is None
        assert await db.channel_identity("site-a") == (
            (await db.get_site("site-a")).public_key,  # type: ignore[union-attr]
            key_id(a),
            await db.latest_plan_version("site-a"),
        )
    finally:
        await db.dispose()
