"""`zapcloud serve` raises its open-files soft limit to what its connection and channel caps hold open.

Run in a child process started with the soft limit at 1024 (what a shell or a systemd unit without
LimitNOFILE gives): under it a worker would run out of descriptors at ~1,000 Zaps.
"""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from cloud.server.serve import FD_MARGIN

_CHILD = """
import resource, sys
from cloud.server.limits import Limits
from cloud.server.serve import raise_fd_limit
warning = raise_fd_limit(Limits(max_channels=int(sys.argv[1]), max_connections=256))
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], warning is not None)
"""


def _run(max_channels: int) -> tuple[int, bool]:
    def low_soft_limit() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    out = subprocess.run([sys.executable, "-c", _CHILD, str(max_channels)], capture_output=True, text=True,
                         preexec_fn=low_soft_limit, timeout=60, check=True)  # fmt: skip
    soft, warned = out.stdout.split()
    return int(soft), warned == "True"


HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


@pytest.mark.skipif(HARD != resource.RLIM_INFINITY and HARD < 5000 + 256 + FD_MARGIN, reason="hard limit too low")
def test_the_soft_limit_is_raised_to_what_the_caps_need() -> None:
    assert _run(5000) == (5000 + 256 + FD_MARGIN, False)


@pytest.mark.skipif(HARD == resource.RLIM_INFINITY, reason="no hard limit to run into")
def test_a_hard_limit_below_the_caps_is_used_whole_and_warned_about() -> None:
    assert _run(HARD) == (HARD, True)
