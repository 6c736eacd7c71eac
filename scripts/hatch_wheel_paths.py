"""A hatchling build hook: puts paths from outside a package's folder into its wheel, but not
into an editable install.

hatchling copies `force-include` paths into site-packages even for an editable install. There
they go stale at the next `make gen` and shadow the generated code that `dev-mode-dirs` already
puts on the path. So each pyproject.toml here lists those paths under this hook instead:

    [tool.hatch.build.targets.wheel.hooks.custom]
    path = "scripts/hatch_wheel_paths.py"
    paths = { "gen/python/shop" = "shop" }   # source, relative to the project -> wheel path
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class WheelPaths(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version != "standard":
            return  # editable: dev-mode-dirs has the path
        root = Path(self.root)
        for source, target in self.config.get("paths", {}).items():
            build_data["force_include"][str((root / source).resolve())] = target
