"""The ``choreo console`` sub-command's options (kept apart from the server, so other commands
do not import the web framework)."""

from __future__ import annotations

import argparse


def add_console_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from choreo.cli import add_finder_options

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
