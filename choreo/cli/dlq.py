"""``choreo dlq``: dead letters (list, show, replay, discard) and parked outbox rows."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from choreo.cli.options import add_finder_options, add_json_option
from choreo.errors import ConfigurationError
from choreo.extras import require


def add(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser("dlq", help="dead letters: list, show, replay, discard")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_commands.add_parser(
        "list", help="open dead letters (--all: resolved ones too), with filters"
    )
    dlq_list.add_argument(
        "--all", action="store_true", help="also letters already replayed or discarded"
    )
    add_letter_filters(dlq_list)
    add_json_option(dlq_list)
    show = dlq_commands.add_parser(
        "show", help="one dead letter: headers, reason, error and payload as JSON"
    )
    show.add_argument("seq", type=int, help="its sequence in CHOREO_DLQ (see `dlq list`)")
    add_json_option(show)
    replay = dlq_commands.add_parser(
        "replay", help="publish a dead letter again (or every open one matching --all filters)"
    )
    replay.add_argument(
        "seq", type=int, nargs="?", help="its sequence in CHOREO_DLQ (see `dlq list`)"
    )
    replay.add_argument(
        "--all", action="store_true", help="replay every open letter matching the filters"
    )
    add_letter_filters(replay)
    replay.add_argument("--note", default="", help="why, kept with the resolution")
    discard = dlq_commands.add_parser(
        "discard", help="close a dead letter without replaying it, saying why"
    )
    discard.add_argument("seq", type=int, help="its sequence in CHOREO_DLQ (see `dlq list`)")
    discard.add_argument("--reason", required=True, help="why it needs no replay (kept)")
    for sub in (replay, discard):
        sub.add_argument(
            "--by", default=None, help="who acts (default: env CHOREO_OPERATOR, else user@host)"
        )
    for sub in (dlq_list, show, replay, discard):
        add_finder_options(sub)
    # Parked outbox rows live in the service's database (they may be too big for the broker).
    parked = dlq_commands.add_parser(
        "parked", help="outbox rows a service parked: never publishable, with the reason"
    )
    unpark = dlq_commands.add_parser(
        "unpark", help="put a parked row back in the outbox (after fixing the cause)"
    )
    unpark.add_argument("event_id", help="its event id (see `dlq parked`)")
    for sub in (parked, unpark):
        sub.add_argument(
            "--database-url",
            default=os.environ.get("CHOREO_DATABASE_URL"),
            required=not os.environ.get("CHOREO_DATABASE_URL"),
            help="the service's database (env CHOREO_DATABASE_URL)",
        )

    dlq.set_defaults(run=lambda args: asyncio.run(_dlq(args)))


def _since(text: str) -> float:
    from choreo.dlq import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_letter_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", default=None, help="the service that gave up")
    parser.add_argument("--event", default=None, help="event type, e.g. PaymentAuthorized")
    parser.add_argument("--reason", default=None, help="e.g. retries_exhausted")
    parser.add_argument(
        "--saga",
        "--order",
        dest="order",
        default=None,
        metavar="ID",
        help="the saga's correlation id (an order id in the reference system)",
    )
    parser.add_argument(
        "--since", type=_since, default=None, help="filed since: 30m, 2h, 7d or an ISO time"
    )


async def _dlq(args: argparse.Namespace) -> int:
    from nats.js.errors import NotFoundError

    from choreo import dlq, subjects
    from choreo.status import connect_operator, operator_login

    if args.dlq_command in ("parked", "unpark"):
        return await _dlq_parked(args)
    if args.dlq_command == "replay" and (args.seq is None) == (not args.all):
        raise ConfigurationError(
            "dlq replay: give one sequence (`choreo dlq replay 12`) or --all with filters"
            " (`choreo dlq replay --all --service payment`), not both"
        )
    nc = await connect_operator(operator_login(args.nats_url, args.data_dir))
    try:
        js = nc.jetstream()
        if args.dlq_command == "list":
            try:
                letters = await dlq.find_dead_letters(
                    js, _letter_filter(args), include_resolved=args.all
                )
            except NotFoundError:
                letters = []  # no dead-letter stream yet: nothing was ever filed
            if args.json:
                print(json.dumps([dlq.letter_json(letter) for letter in letters], indent=2))
            else:
                _print_letters(letters, args.all)
            return 0
        if args.dlq_command == "replay" and args.all:
            return await _dlq_replay_all(js, args)
        try:
            if args.dlq_command == "show":
                letter = await dlq.get_dead_letter(js, args.seq)
                if args.json:
                    print(json.dumps(dlq.letter_json(letter, full=True), indent=2))
                else:
                    print(_letter_detail(letter))
            elif args.dlq_command == "discard":
                done = await dlq.discard(js, args.seq, note=args.reason, by=args.by)
                print(f"dead letter {args.seq} {done.describe()}")
            else:
                new_id = await dlq.replay_letter(js, args.seq, by=args.by, note=args.note)
                print(f"replayed dead letter {args.seq} as Nats-Msg-Id {new_id}")
        except dlq.ReplayRefused as refused:  # a notice, resolved, suspect, or source gone
            print(f"choreo: {refused}", file=sys.stderr)
            return 1
        except NotFoundError:
            print(
                f"choreo: no dead letter {args.seq} in {subjects.DLQ_STREAM}"
                " (see `choreo dlq list --all`)",
                file=sys.stderr,
            )
            return 1
    finally:
        await nc.close()
    return 0


def _letter_filter(args: argparse.Namespace) -> Any:
    from choreo.dlq import LetterFilter

    return LetterFilter(
        service=args.service,
        event=args.event,
        reason=args.reason,
        order_id=args.order,
        since=args.since,
    )


def _when(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_letters(letters: list[Any], include_resolved: bool) -> None:
    """One line per letter, then its full error detail indented below (never cut)."""
    print(f"{'SEQ':>6}  {'FILED (UTC)':<19}  {'SERVICE':<13} {'REASON':<27} {'EVENT':<24} ORDER")
    for letter in letters:
        flag = "  ALARM" if letter.alarm else "  compensated" if letter.compensated else ""
        flag = "  SUSPECT" + flag if letter.suspect else flag
        event = letter.event_type.rsplit(".", 1)[-1]
        print(
            f"{letter.seq:>6}  {_when(letter.dead_lettered_at):<19}  {letter.service:<13}"
            f" {letter.reason:<27} {event:<24} {letter.correlation_id or '-'}{flag}"
        )
        if letter.detail:
            print(f"{'':>8}{letter.detail}")
        for why in letter.suspicions:
            print(f"{'':>8}SUSPECT: {why}")
        if letter.source_gone:
            print(f"{'':>8}not replayable: {letter.source_gone}")
        if letter.resolution is not None:
            print(f"{'':>8}[{letter.resolution.describe()}]")
    kind = "dead letter(s)" if include_resolved else "open dead letter(s)"
    print(f"{len(letters)} {kind}")


def _letter_detail(letter: Any) -> str:
    from choreo import dlq

    status = "open" if letter.resolution is None else letter.resolution.describe()
    lines = [
        f"dead letter {letter.seq}: {status}",
        f"  service:     {letter.service}",
        f"  reason:      {letter.reason}",
        f"  event:       {letter.event_type}",
        f"  order:       {letter.correlation_id or '-'}",
        f"  subject:     {letter.subject}",
        f"  filed at:    {_when(letter.dead_lettered_at)} UTC",
        f"  deliveries:  {letter.deliveries}",
    ]
    if letter.alarm:
        lines.append("  ALARM:       nothing compensated this step; an operator must act")
    if letter.compensated:
        lines.append("  compensated: the give-up handler compensated; the saga went on")
    lines += [f"  SUSPECT:     {why}" for why in letter.suspicions]
    if letter.source_gone:
        lines.append(f"  not replayable: {letter.source_gone}")
    lines += ["error:", f"  {letter.detail or '-'}", "headers:"]
    lines += [f"  {name}: {value}" for name, value in sorted(letter.headers.items())]
    if letter.is_parked_notice:
        lines.append("payload: none (a notice: the event is parked in the service's database)")
        return "\n".join(lines)
    try:
        payload = json.dumps(dlq.decode_payload(letter.event_type, letter.body), indent=2)
        lines += [f"payload ({letter.event_type}):", payload]
    except ValueError as exc:
        lines.append(f"payload: {len(letter.body)} bytes, not decodable ({exc})")
    return "\n".join(lines)


async def _dlq_replay_all(js: Any, args: argparse.Namespace) -> int:
    """Replay every open letter matching the filters, with a progress bar on stderr."""
    from nats.js.errors import NotFoundError

    require("rich", "cli")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from choreo import dlq

    try:
        letters = await dlq.find_dead_letters(js, _letter_filter(args))
    except NotFoundError:
        letters = []
    notices = [letter for letter in letters if letter.is_parked_notice]
    letters = [letter for letter in letters if not letter.is_parked_notice]
    replayed, failed = 0, []
    with Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as progress:
        task = progress.add_task("replay", total=len(letters))
        for letter in letters:
            try:
                await dlq.replay_letter(js, letter.seq, by=args.by, note=args.note)
                replayed += 1
            except dlq.ReplayRefused as exc:  # resolved meanwhile, suspect, or source gone
                failed.append(f"  {letter.seq}: {exc}")
            progress.advance(task)
    print(f"replayed {replayed} of {len(letters)} open dead letter(s)")
    if notices:
        print(
            f"skipped {len(notices)} notice(s) of parked outbox rows (no body to replay):"
            f" {', '.join(str(n.seq) for n in notices)}; see `choreo dlq parked`"
        )
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0


async def _dlq_parked(args: argparse.Namespace) -> int:
    from choreo import dlq
    from choreo.store import open_database
    from choreo.store.schema import runtime_schema

    db = await open_database(args.database_url)
    try:
        await db.migrate(runtime_schema(db.dialect))  # idempotent: the table may be new
        if args.dlq_command == "parked":
            rows = await dlq.list_parked(db)
            for row in rows:
                print(
                    f"{row.event_id}  {row.service:<13} {row.reason:<22} {row.subject}"
                    f"  {len(row.body)} bytes  {row.detail[:80]}"
                )
            print(f"{len(rows)} parked row(s)")
            return 0
        if not await dlq.unpark(db, args.event_id):
            print(f"no parked row with event id {args.event_id}", file=sys.stderr)
            return 1
        print(f"event {args.event_id} is back in the outbox; the service's relay sends it next")
        return 0
    finally:
        await db.close()
