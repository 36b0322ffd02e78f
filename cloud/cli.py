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

    bt = sub.add_parser("backtest", help="replay price/load/PV traces through the rolling planner and the edge")
    from cloud.backtest_config import add_arguments

    add_arguments(bt)
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
