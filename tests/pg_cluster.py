"""Run a command next to a throwaway PostgreSQL cluster: `python -m tests.pg_cluster -- pytest -q`.

Debian's server binaries (/usr/lib/postgresql/N/bin, `make deps-system` installs them) initdb a new data
directory under a temporary directory, listening on 127.0.0.1 on a free port only (its socket in that
directory, so it never meets a system cluster), without fsync (a test database need not survive a crash).
The command runs with ZAPCLOUD_TEST_DB_URL naming an empty database there; the cluster is stopped and
its directory removed afterwards, whatever the command's outcome. PostgreSQL refuses to run as root: as
root (CI), the cluster runs as the `postgres` user (`runuser`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.ports import free_port

DB_NAME = "zapcloud_test"


def pg_bindir() -> Path:
    """The newest installed server version's binaries."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise SystemExit("pg_cluster: no PostgreSQL server (/usr/lib/postgresql/*/bin/initdb): run `make deps-system`")
    return found[-1].parent


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    """Start a cluster; yields the SQLAlchemy URL of its empty test database."""
    bindir = pg_bindir()
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else pwd.getpwuid(os.geteuid()).pw_name
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    top = Path(tempfile.mkdtemp(prefix="zapd-pg-"))
    data = top / "data"
    if as_root:
        shutil.chown(top, user="postgres")
    port = free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, stdout=subprocess.DEVNULL, cwd="/")

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "--no-sync", "-E", "UTF8")
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {top} -c fsync=off -c full_page_writes=off"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(top / "log"), "-w", "-t", "60", "-o", opts, "start")
        try:
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, DB_NAME)
            yield f"postgresql+asyncpg://{user}@127.0.0.1:{port}/{DB_NAME}"
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m tests.pg_cluster -- COMMAND...", file=sys.stderr)
        return 2
    with cluster() as url:
        print(f"pg_cluster: ZAPCLOUD_TEST_DB_URL={url}", flush=True)
        return subprocess.run(args, env={**os.environ, "ZAPCLOUD_TEST_DB_URL": url}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
