"""`zapcloud`: the cloud endpoint's command line. Each subcommand lives in its own module,
imported only when used so that `zapcloud optimize` does not load the web stack."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zapcloud", description="zapd cloud endpoint")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP endpoint")
    serve.add_argument("--db", default="sqlite+aiosqlite:///zapcloud.sqlite", help="SQLAlchemy async URL")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--key", default="zapcloud.key", help="cloud Ed25519 signing key file (created if missing)")
    serve.add_argument("--no-planner", action="store_true", help="do not run the planning loop in this worker")
    serve.add_argument(
        "--planner-idle-s", type=float, default=5.0, help="seconds the planner waits when no site is due"
    )

    opt = sub.add_parser("optimize", help="solve one optimization problem (JSON) and print the solution")
    opt.add_argument("problem", help="path to PROBLEM.json, or - for stdin")

    bt = sub.add_parser("backtest", help="replay price/load/PV traces through the rolling planner")
    bt.add_argument("traces", help="CSV with columns ts,import_price,export_price,load_kw,pv_kw")
    bt.add_argument("--battery-kwh", type=float, default=10.0)
    bt.add_argument("--battery-kw", type=float, default=5.0)
    bt.add_argument("--replan-hours", type=float, default=1.0)
    bt.add_argument("--horizon-hours", type=float, default=48.0)
    bt.add_argument("--cycle-cost", type=float, default=0.02, help="battery wear per kWh in or out")
    bt.add_argument("--pv-kwp", type=float, default=5.0, help="PV size the clear-sky forecaster assumes")
    bt.add_argument("--lat", type=float, default=52.1)
    bt.add_argument("--lon", type=float, default=5.18)
    bt.add_argument("--tilt", type=float, default=35.0, help="PV tilt, degrees")
    bt.add_argument("--azimuth", type=float, default=180.0, help="PV azimuth, degrees (180 = south)")
    bt.add_argument("--days", type=float, default=None, help="only the first N days of the traces")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "optimize":
        from cloud.optimizer_cli import run_optimize

        return run_optimize(args.problem)
    if args.command == "serve":
        from cloud.server import run_serve

        return run_serve(
            db_url=args.db,
            host=args.host,
            port=args.port,
            key_path=args.key,
            planner=not args.no_planner,
            planner_idle_s=args.planner_idle_s,
        )
    if args.command == "backtest":
        from cloud.backtest import run_backtest

        return run_backtest(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
