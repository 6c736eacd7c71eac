"""``choreo console``: its options here, the server (and the web framework) only when it runs."""

from __future__ import annotations

import argparse
import asyncio

from choreo.extras import require


def add(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from choreo.cli.options import add_finder_options

    console = commands.add_parser(
        "console", help="a web console: sagas and their timelines, dead letters and replay"
    )
    console.add_argument("--port", type=int, default=8080, help="0 takes a free port")
    console.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on; the console has no login, so keep it on loopback",
    )
    add_finder_options(console)
    console.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    require("aiohttp", "console")
    from choreo.console.server import run_console

    return asyncio.run(run_console(args))
