"""`zapd`: the daemon and its set-up commands (see ARCHITECTURE.md, Contracts: CLI)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zapd.paths import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, SYSTEMD_DROPIN_DIR

if TYPE_CHECKING:
    from zapd.config import ZapdConfig

EXIT_BAD_CONFIG = 2
_STATE_DIR_HELP = f"the config's store.state_dir, where keys/ lives (default {DEFAULT_STATE_DIR})"
_INSECURE_HELP = "allow plain http:// to a cloud that is not on loopback (telemetry readable on the path)"


def load_or_report(path: Path, *, strict: bool = False, allow_insecure: bool = False) -> ZapdConfig | None:
    """The checked pydantic config (`zapd config check`, the other commands, `zapd run`'s check child).

    Errors and warnings go to stderr as `file: key: reason` lines; warnings stop nothing unless `strict`.
    """
    from zapd.config_check import check_file

    result = check_file(path)
    for line in (*result.errors, *result.warnings):
        print(line, file=sys.stderr)
    if result.config is None or result.errors or (strict and result.warnings):
        return None
    return _cloud_transport(path, result.config, allow_insecure)


def _cloud_transport(path: Path, config: ZapdConfig, allow_insecure: bool) -> ZapdConfig | None:
    """Plain http:// only to loopback, unless the config or `--allow-insecure` accepts it."""
    cloud = config.cloud
    if cloud is None:
        return config
    from cloud_sync.transport import insecure_url_problem  # httpx: only for a site with a cloud

    if allow_insecure and not cloud.allow_insecure:
        cloud = cloud.model_copy(update={"allow_insecure": True})
        config = config.model_copy(update={"cloud": cloud})
    problem = insecure_url_problem(cloud.url, cloud.allow_insecure)
    if problem is not None:
        print(f"{path}: cloud.url: {problem}", file=sys.stderr)
        return None
    return config


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_or_report(Path(args.path), strict=args.strict, allow_insecure=args.allow_insecure)
    if config is None:
        return EXIT_BAD_CONFIG
    print(f"{args.path}: ok ({len(config.devices)} devices, site {config.site.id})")
    return 0


# Optional imports of libraries zapd uses that a daemon never needs, blocked before they load (an
# entry of None in sys.modules makes `import` raise ImportError, which each library handles):
# httpx's command-line client (click, pygments: 2 MB) and structlog's greenlet probe (1 MB; greenlet
# comes with the cloud's SQLAlchemy, it is not on a gateway). See docs/decisions.md, footprint.
DAEMON_BLOCKED_IMPORTS = ("httpx._main", "greenlet")


def lean_daemon_process() -> None:
    """Before the daemon's first import: no optional imports it never uses (only `zapd run`'s own process).

    pydantic is not among them: it never loads here, the config is checked in a child
    (zapd/config_load.py), and tests/unit/test_footprint.py holds the daemon to that.
    """
    for name in DAEMON_BLOCKED_IMPORTS:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]


def cmd_run(args: argparse.Namespace) -> int:
    from zapd.clock import clock_from_env
    from zapd.config_load import load_in_child
    from zapd.daemon import Daemon, StartupError
    from zapd.logs import configure

    # Checked by the pydantic models in a child, run on msgspec Structs here (docs/decisions.md, footprint).
    config = load_in_child(Path(args.config), allow_insecure=args.allow_insecure)
    if config is None:
        return EXIT_BAD_CONFIG
    configure(config.log.level)
    # Not asyncio.run: its teardown waits for every task, and a task that ignores cancellation would
    # then keep a stopped daemon (devices already safe, store closed) from exiting for systemd.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(Daemon(config, clock_from_env()).run())
    except StartupError as exc:
        print(f"zapd: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    finally:
        loop.close()


def cmd_keygen(args: argparse.Namespace) -> int:
    from cloud_sync.keys import KeyFileExistsError, generate_keypair, public_key_b64

    try:
        verify_key = generate_keypair(Path(args.state_dir), force=args.force)
    except KeyFileExistsError as exc:
        print(f"zapd keygen: {exc}", file=sys.stderr)
        return 1
    print(public_key_b64(verify_key))
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    from cloud_sync.keys import KeyFileError, load_signing_key, public_key_b64, zap_key_path

    path = zap_key_path(Path(args.state_dir))
    try:
        key = load_signing_key(path)
    except KeyFileError as exc:
        hint = "; run 'zapd keygen' first" if not path.exists() else ""
        print(f"zapd keys show: {exc}{hint}", file=sys.stderr)
        return 1
    print(public_key_b64(key.verify_key))
    return 0


def cmd_devices_scan(args: argparse.Namespace) -> int:
    from zapd.scan import scan

    if args.host is not None or args.serial is not None:  # recognition without a config (docs/devices.md)
        from zapd.recognize_cli import scan_host, scan_serial

        units = args.unit or [1]
        try:
            if args.host is not None:
                return asyncio.run(scan_host(args.host, unit_ids=units, as_json=args.json))
            return asyncio.run(
                scan_serial(
                    args.serial,
                    unit_ids=units,
                    baudrate=args.baud,
                    parity=args.parity,
                    stopbits=args.stopbits,
                    as_json=args.json,
                )
            )
        except ValueError as exc:
            print(f"zapd devices scan: {exc}", file=sys.stderr)
            return EXIT_BAD_CONFIG
    config = load_or_report(Path(args.config), allow_insecure=True)
    if config is None:
        return EXIT_BAD_CONFIG
    return asyncio.run(scan(config, as_json=args.json))


def cmd_plan_reset_version(args: argparse.Namespace) -> int:
    """Operator recovery from a plan version the cloud can no longer exceed (docs/operations.md)."""
    from cloud_sync.fetcher import reset_plan_version
    from zapd.clock import clock_from_env
    from zapd.store import Store

    config = load_or_report(Path(args.config), allow_insecure=True)
    if config is None:
        return EXIT_BAD_CONFIG
    now = clock_from_env().now()
    db = config.store.state_dir / "zapd.sqlite"
    if not db.exists():
        print(f"zapd plan reset-version: no store at {db} (store.state_dir in {args.config}?)", file=sys.stderr)
        return 1

    async def reset() -> int | None:
        store = await Store.open(db)
        try:
            return await reset_plan_version(store, now)
        finally:
            await store.close()

    forgotten = asyncio.run(reset())
    held = f"version {forgotten}" if forgotten is not None else "no version"
    print(
        f"zapd plan reset-version: forgot {held} and the cached plans; the next plan issued after "
        f"{now.isoformat()} (less 300 s of clock skew) is taken, whatever its version"
    )
    return 0


def cmd_systemd_dropin(args: argparse.Namespace) -> int:
    """Print (or write) the systemd drop-in granting the paths this config writes outside the unit's own."""
    from zapd.systemd_paths import DROPIN_NAME, create_hint, dropin_text, paths_outside_the_unit

    config = load_or_report(Path(args.config))
    if config is None:
        return EXIT_BAD_CONFIG
    text = dropin_text(config, args.config)
    if not args.write:
        print(text, end="")
        return 0
    if not paths_outside_the_unit(config):
        print("zapd systemd-dropin: nothing to add (the config writes only where the unit allows)")
        return 0
    target = Path(args.dir) / DROPIN_NAME
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    except OSError as exc:
        print(f"zapd systemd-dropin: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {target}; create the directories if needed ({create_hint(config)}), then: systemctl daemon-reload")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`python -m zapd_demo` in this process's place: the demo runs the cloud, which zapd never imports."""
    import zapd

    # zapd_demo sits next to zapd (repository or site-packages), also in a venv installed before it existed.
    root = str(Path(zapd.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    argv = [sys.executable, "-m", "zapd_demo", *args.demo_args]
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zapd", description="zapd: edge energy management daemon")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument(
        "--config", default=str(DEFAULT_CONFIG_PATH), help=f"the config file (default {DEFAULT_CONFIG_PATH})"
    )
    run.add_argument("--allow-insecure", action="store_true", help=_INSECURE_HELP)
    run.set_defaults(func=cmd_run)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file without starting anything")
    check.add_argument("path", help="the config file to check")
    check.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 2)")
    check.add_argument("--allow-insecure", action="store_true", help=_INSECURE_HELP)
    check.set_defaults(func=cmd_config_check)

    plan = sub.add_parser("plan", help="plan state tools")
    plan_sub = plan.add_subparsers(dest="plan_command", required=True)
    reset = plan_sub.add_parser(
        "reset-version",
        help="forget the accepted plan version and cached plans (recovery from a version the cloud cannot exceed)",
    )
    reset.add_argument(
        "--config", default=str(DEFAULT_CONFIG_PATH), help=f"the config file (default {DEFAULT_CONFIG_PATH})"
    )
    reset.set_defaults(func=cmd_plan_reset_version)

    keygen = sub.add_parser("keygen", help="create the Zap's Ed25519 key pair")
    keygen.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help=_STATE_DIR_HELP)
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key")
    keygen.set_defaults(func=cmd_keygen)

    keys = sub.add_parser("keys", help="key tools")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    show = keys_sub.add_parser("show", help="print the Zap's public key")
    show.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help=_STATE_DIR_HELP)
    show.set_defaults(func=cmd_keys_show)

    devices = sub.add_parser("devices", help="device tools")
    dev_sub = devices.add_subparsers(dest="devices_command", required=True)
    scan = dev_sub.add_parser("scan", help="list the devices found at the configured endpoints")
    scan.add_argument(
        "--config", default=str(DEFAULT_CONFIG_PATH), help=f"the config file (default {DEFAULT_CONFIG_PATH})"
    )
    scan.add_argument("--json", action="store_true", help="stable JSON output")
    scan.add_argument(
        "--host", help="H[:PORT]: probe this address (read-only) for SunSpec and each profile, instead of the config"
    )
    scan.add_argument("--serial", help="/dev/ttyX: probe an RS-485 line (Modbus RTU, read-only) instead of the config")
    scan.add_argument("--baud", type=int, default=9600, help="line speed with --serial (9600)")
    scan.add_argument("--parity", default="N", choices=["N", "E", "O"], help="parity with --serial (N)")
    scan.add_argument("--stopbits", type=int, default=1, choices=[1, 2], help="stop bits with --serial (1)")
    scan.add_argument("--unit", type=int, action="append", help="unit id to probe with --host/--serial (repeatable; 1)")
    scan.set_defaults(func=cmd_devices_scan)

    dropin = sub.add_parser(
        "systemd-dropin", help="the systemd drop-in that lets zapd write a non-default state_dir or socket"
    )
    dropin.add_argument(
        "--config", default=str(DEFAULT_CONFIG_PATH), help=f"the config file (default {DEFAULT_CONFIG_PATH})"
    )
    dropin.add_argument("--write", action="store_true", help="write it into --dir instead of printing it")
    dropin.add_argument("--dir", default=str(SYSTEMD_DROPIN_DIR), help="drop-in directory (default: %(default)s)")
    dropin.set_defaults(func=cmd_systemd_dropin)

    demo = sub.add_parser(
        "demo",
        help="run a whole simulated site on loopback (python -m zapd_demo; `zapd demo --help` for its options)",
        add_help=False,
    )
    demo.set_defaults(func=cmd_demo)  # its options are zapd_demo's own (main passes them through)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        args.demo_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.func is cmd_run:
        lean_daemon_process()
    from zapd.logs import configure

    configure("warning")  # logs go to stderr, so --json output on stdout stays clean
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
