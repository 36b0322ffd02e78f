from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, speed=240.0, cloud_planner=False)
    try:
        yield s
    finally:
        s.stop_all()
        for name, proc in s.procs.items():
            log = proc.output()
            if "Traceback" in log:
                print(f"--- {name} log (has a traceback) ---\n{log[-4000:]}")
