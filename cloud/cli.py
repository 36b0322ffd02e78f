"""`zapcloud`: the cloud endpoint's command line. Each subcommand lives in its own module,
imported only when used so that `zapcloud optimize` does not load the web stack."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.planner_settings import PlannerSettings
    from cloud.server.limits import Limits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zapcloud", description="zapd cloud endpoint")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP endpoint")
    serve.add_argument("--db", default="sqlite+aiosqlite:///zapcloud.sqlite", help="SQLAlchemy async URL")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    serve.add_argument("--key", default="zapcloud.key", help="cloud Ed25519 signing key file (created if missing)")
    serve.add_argument("--no-planner", action="store_true", help="do not run the planning loop in this worker")
    serve.add_argument(
        "--planner-idle-s", type=float, default=5.0, help="seconds the planner waits when no site is due"
    )
    serve.add_argument(
        "--admin-token-file",
        metavar="PATH",
        help="file holding the admin bearer token (else $ZAPCLOUD_ADMIN_TOKEN; one of them is required)",
    )
    serve.add_argument(
        "--metrics-token-file",
        metavar="PATH",
        help="file holding a token that may only read /metrics (else $ZAPCLOUD_METRICS_TOKEN; optional)",
    )
    _planner_arguments(serve)
    # Defaults: cloud/server/limits.py `Limits` (listed in docs/operations.md); unset flags keep them.
    lim = serve.add_argument_group("limits (defaults in docs/operations.md)")
    lim.add_argument("--max-connections", type=int, help="open HTTP connections per worker")
    lim.add_argument("--max-channels", type=int, help="live channels (Zap WebSockets) per worker")
    lim.add_argument("--header-timeout-s", type=float, help="seconds a client has to send its request headers")
    lim.add_argument("--body-timeout-s", type=float, help="seconds a client has to send its request body")
    for name, what in (
        ("site", "requests per site key"),
        ("admin", "requests per admin/metrics token"),
        ("fail", "failed authentications per client address"),
    ):
        lim.add_argument(f"--{name}-rate", type=float, help=f"{what}, per second")
        lim.add_argument(f"--{name}-burst", type=float, help=f"{what}, in a burst")

    db = sub.add_parser("db", help="the database schema: upgrade to the newest migration, show or check it")
    db.add_argument(
        "action", choices=("upgrade", "current", "check"), help="check: exit 1 if it differs from the models"
    )
    db.add_argument("--db", default="sqlite+aiosqlite:///zapcloud.sqlite", help="SQLAlchemy async URL")

    token = sub.add_parser("token", help="write a new random admin (or metrics) token to a file, mode 0600")
    token.add_argument("path", help="file to create (never overwritten)")

    opt = sub.add_parser("optimize", help="solve one optimization problem (JSON) and print the solution")
    opt.add_argument("problem", help="path to PROBLEM.json, or - for stdin")

    bt = sub.add_parser("backtest", help="replay price/load/PV traces through the rolling planner and the edge")
    from cloud.backtest_config import add_arguments

    add_arguments(bt)
    return parser


def _planner_arguments(serve: argparse.ArgumentParser) -> None:
    from cloud.planner_settings import (
        DEFAULT_WEATHER_CACHE_S,
        DEFAULT_WEATHER_TIMEOUT_S,
        EXECUTIONS,
        LOAD_MODELS,
        OPEN_METEO_URL,
        PV_MODELS,
        PlannerSettings,
    )

    d = PlannerSettings()
    group = serve.add_argument_group(
        "planner (defaults for every site; a site's registration may override them: assets.planning)"
    )
    group.add_argument(
        "--weather-url",
        default=OPEN_METEO_URL,
        metavar="URL",
        help="Open-Meteo forecast API for sites that register `weather` (default: %(default)s)",
    )
    group.add_argument("--no-weather", action="store_true", help="never fetch weather forecasts")
    group.add_argument(
        "--weather-timeout-s",
        type=float,
        default=DEFAULT_WEATHER_TIMEOUT_S,
        help="seconds the weather service has for a whole answer (default: %(default)s)",
    )
    group.add_argument(
        "--weather-cache-s",
        type=float,
        default=DEFAULT_WEATHER_CACHE_S,
        help="seconds a location's weather forecast is reused (0: fetch for every plan; default: %(default)s)",
    )
    group.add_argument("--pv-model", choices=PV_MODELS, default=d.pv_model, help="PV forecaster (default: %(default)s)")
    group.add_argument(
        "--load-model", choices=LOAD_MODELS, default=d.load_model, help="load forecaster (default: %(default)s)"
    )
    group.add_argument(
        "--price-forecast",
        action=argparse.BooleanOptionalAction,
        default=d.price_forecast,
        help="plan past the published day-ahead prices on forecast ones (default: off)",
    )
    group.add_argument(
        "--execution", choices=EXECUTIONS, default=d.execution, help="how plan slots run (default: %(default)s)"
    )
    group.add_argument(
        "--pv-persistence",
        action=argparse.BooleanOptionalAction,
        default=d.pv_persistence,
        help="plan the PV of today and the next days on the site's own persistence of clear and cloudy days "
        "(the factor forecast without weather; default: %(default)s)",
    )
    group.add_argument(
        "--pv-index",
        action=argparse.BooleanOptionalAction,
        default=d.pv_index,
        help="plan each day's PV on the site's ratio to the regional day-ahead PV forecast it uploads to "
        "/v1/sites/{id}/pv-index, where it uploads one (default: %(default)s)",
    )
    group.add_argument(
        "--load-day-level",
        action=argparse.BooleanOptionalAction,
        default=d.load_day_level,
        help="scale the profile load forecast by the site's own day-to-day load level persistence "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--load-day-kinds",
        action=argparse.BooleanOptionalAction,
        default=d.load_day_kinds,
        help="pool the profile load forecast by day kind: working day / weekend or public holiday of the time "
        "zone's country (default: %(default)s)",
    )
    group.add_argument(
        "--scenarios",
        action=argparse.BooleanOptionalAction,
        default=d.scenarios,
        help="two-stage plan over a dark and a bright day (the site's own P10 / P90 daily PV ratio; the factor "
        "forecast without weather or an external PV forecast only; default: %(default)s)",
    )
    group.add_argument(
        "--load-reserve",
        action=argparse.BooleanOptionalAction,
        default=d.load_reserve,
        help="plan the slots the battery serves on the newsvendor quantile of the site's whole-day load ratio "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--fine-hours",
        type=float,
        default=d.fine_hours,
        help="hours planned at the 15-minute step, then one slot per hour (168: every slot at the step; "
        "default: %(default)s)",
    )


def _planner_settings(args: argparse.Namespace) -> PlannerSettings:
    from cloud.planner_settings import PlannerSettings

    return PlannerSettings(
        weather_url=None if args.no_weather else args.weather_url,
        weather_timeout_s=args.weather_timeout_s,
        weather_cache_s=args.weather_cache_s,
        pv_model=args.pv_model,
        load_model=args.load_model,
        price_forecast=args.price_forecast,
        execution=args.execution,
        pv_persistence=args.pv_persistence,
        pv_index=args.pv_index,
        load_day_level=args.load_day_level,
        load_day_kinds=args.load_day_kinds,
        scenarios=args.scenarios,
        load_reserve=args.load_reserve,
        fine_hours=args.fine_hours,
    )


def _limits(args: argparse.Namespace) -> Limits:
    from cloud.server.limits import Limits, Rate

    d = Limits()
    rates = {
        name: Rate(
            d_rate.per_s if getattr(args, f"{name}_rate") is None else getattr(args, f"{name}_rate"),
            d_rate.burst if getattr(args, f"{name}_burst") is None else getattr(args, f"{name}_burst"),
        )
        for name, d_rate in (("site", d.site_rate), ("admin", d.admin_rate), ("fail", d.fail_rate))
    }
    return Limits(
        max_connections=d.max_connections if args.max_connections is None else args.max_connections,
        max_channels=d.max_channels if args.max_channels is None else args.max_channels,
        header_timeout_s=d.header_timeout_s if args.header_timeout_s is None else args.header_timeout_s,
        body_timeout_s=d.body_timeout_s if args.body_timeout_s is None else args.body_timeout_s,
        site_rate=rates["site"],
        admin_rate=rates["admin"],
        fail_rate=rates["fail"],
        cpu_slots=d.cpu_slots,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "optimize":
        from cloud.optimizer_cli import run_optimize

        return run_optimize(args.problem)
    if args.command == "serve":
        from cloud.server import run_serve

        try:
            limits = _limits(args)
            planner_settings = _planner_settings(args)
        except ValueError as exc:
            print(f"zapcloud: {exc}", file=sys.stderr)
            return 2
        return run_serve(
            db_url=args.db,
            host=args.host,
            port=args.port,
            key_path=args.key,
            admin_token_file=args.admin_token_file,
            metrics_token_file=args.metrics_token_file,
            limits=limits,
            planner=not args.no_planner,
            planner_idle_s=args.planner_idle_s,
            planner_settings=planner_settings,
        )
    if args.command == "db":
        from cloud.server.dbcli import run_db

        return run_db(args.action, args.db)
    if args.command == "token":
        from cloud.server.auth import write_token_file

        try:
            write_token_file(Path(args.path))
        except OSError as exc:
            print(f"zapcloud: {args.path}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"zapcloud: wrote a new token to {args.path}")
        return 0
    if args.command == "backtest":
        from cloud.backtest import run_backtest

        return run_backtest(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
