"""Tests of examples/: services of other teams built on the runtime."""

from __future__ import annotations

import sys
from pathlib import Path

LOYALTY = Path(__file__).resolve().parents[2] / "examples" / "loyalty"
# What another team's install would put on the path: its package and its generated code.
LOYALTY_PATHS = [str(LOYALTY), str(LOYALTY / "gen" / "python")]
TRAVEL = LOYALTY.parent / "travel"
TRAVEL_PATHS = [str(TRAVEL), str(TRAVEL / "gen" / "python")]
for path in [*LOYALTY_PATHS, *TRAVEL_PATHS]:
    if path not in sys.path:
        sys.path.append(path)
