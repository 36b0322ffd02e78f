"""Hypothesis: CI replays a fixed set of examples (a red CI run always means a code change broke
something); on a developer's machine every run explores new examples, which is how bugs are found."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
