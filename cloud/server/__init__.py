"""The `zapcloud serve` HTTP endpoint: site registry, telemetry ingest, signed plans."""

from cloud.db import Database
from cloud.server.app import create_app
from cloud.server.serve import run_serve
from cloud.server.service import next_plan_version, publish_plan, register_site

__all__ = ["Database", "create_app", "next_plan_version", "publish_plan", "register_site", "run_serve"]
