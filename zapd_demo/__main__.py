"""`python -m zapd_demo` (what `zapd demo` and `make demo` run)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser(prog: str = "zapd demo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="run a whole simulated site on loopback: devices, a local zapcloud, the daemon"
    )
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours to run (default 24)")
    parser.add_argument("--speed", type=float, default=0.0, help="clock speed-up (0 = fit the run in ~45 s)")
    parser.add_argument("--out", default="demo-out", help="folder for the plot, database and config")
    parser.add_argument("--quiet", action="store_true", help="no daemon logs")
    parser.add_argument(
        "--no-cloud", action="store_true", help="plan locally into a plan file instead of a local zapcloud"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.hours <= 24 * 14:
        build_parser().error("--hours must be > 0 and at most 336 (two weeks)")
    from zapd_demo.run import run_demo

    return run_demo(
        hours=args.hours, speed=args.speed, out_dir=Path(args.out), quiet=args.quiet, use_cloud=not args.no_cloud
    )


if __name__ == "__main__":
    sys.exit(main())
