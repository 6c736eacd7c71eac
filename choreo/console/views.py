"""Server-rendered HTML of the console's pages: plain tables and forms, styles inline, no
scripts or assets from anywhere else (the console must work on a machine without internet).
Every value from a stream is escaped."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

from choreo import contracts, dlq
from choreo.console.model import (
    SagaState,
    SagaSummary,
    TimelineEvent,
    letter_event_type,
    masked_headers,
    order_id_of_letter,
    short_name,
)
from choreo.console.reads import Replayed, SagaDetail
from choreo.console.svg import saga_svg

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1b1b1b; background: #fafafa; }
header { background: #1f2937; color: #fff; padding: 10px 24px; display: flex; gap: 24px;
  align-items: baseline; }
header a { color: #d1e3ff; text-decoration: none; } header a:hover { text-decoration: underline; }
header .brand { font-weight: 600; color: #fff; }
main { padding: 16px 24px; }
table { border-collapse: collapse; background: #fff; margin: 8px 0 20px; }
th, td { border-bottom: 1px solid #e5e7eb; padding: 5px 10px; text-align: left;
  vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font: 12px ui-monospace, monospace; }
pre { margin: 0; white-space: pre-wrap; max-width: 720px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  background: #e5e7eb; }
.badge.success { background: #d1fae5; } .badge.failure { background: #fde68a; }
.badge.running { background: #dbeafe; }
.badge.alarm { background: #fecaca; } .badge.compensated { background: #e0e7ff; }
tr.failure td.event { color: #b91c1c; font-weight: 600; }
tr.compensation td.event { color: #b45309; font-weight: 600; }
tr.copy { color: #6b7280; }
.notice { padding: 8px 12px; border-radius: 6px; background: #d1fae5; margin: 8px 0; }
.notice.error { background: #fee2e2; }
.diagram { overflow-x: auto; background: #fff; border: 1px solid #e5e7eb; padding: 8px; }
form.inline { display: inline; }
button { cursor: pointer; }
.muted { color: #6b7280; }
"""


def page(title: str, body: str, *, refresh_s: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)} · choreo console</title>{refresh}<style>{_CSS}</style></head>"
        "<body><header><span class='brand'>choreo console</span>"
        "<a href='/sagas' id='nav-sagas'>Sagas</a>"
        "<a href='/dead-letters' id='nav-dead-letters'>Dead letters</a></header>"
        f"<main>{body}</main></body></html>"
    )


def saga_href(order_id: str) -> str:
    return "/sagas/" + quote(order_id, safe="")


def letter_href(seq: int) -> str:
    return f"/dead-letters/{seq}"


def _time(at: datetime | None) -> str:
    if at is None:
        return "-"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _epoch(seconds: float) -> str:
    return _time(datetime.fromtimestamp(seconds, UTC)) if seconds else "-"


def _badge(state: SagaState) -> str:
    classes = f"badge {escape(state.kind)} {escape(state.status)} status"
    return f"<span class='{classes}'>{escape(state.status)}</span>"


def _json(value: object) -> str:
    return escape(json.dumps(value, indent=2, sort_keys=True))


def _names(events: Iterable[str]) -> str:
    return " or ".join(
        escape(short_name(name)) for name in dict.fromkeys(short_name(e) for e in events)
    )


def _shapes_text(shapes: list[contracts.SagaShape]) -> str:
    """How each saga of the contracts starts and ends, as its ``saga`` option says."""
    parts = []
    for shape in shapes:
        closing = f", then {escape(short_name(shape.closing_event))}" if shape.closing_event else ""
        parts.append(
            f"A saga <strong>{escape(shape.name)}</strong> starts with"
            f" {_names(shape.start_events)} and is done at {_names(shape.final_events)}"
            f"{closing}; its duration runs to that event."
        )
    return " " + " ".join(parts)


def sagas_page(sagas: list[SagaSummary], limit: int) -> str:
    rows = []
    for saga in sagas:
        duration = "-" if saga.duration_s is None else f"{saga.duration_s * 1000:.0f} ms"
        rows.append(
            f"<tr class='saga' data-order-id='{escape(saga.order_id)}'>"
            f"<td><a href='{saga_href(saga.order_id)}'>"
            f"<code>{escape(saga.order_id)}</code></a></td>"
            f"<td>{escape(saga.saga)}</td>"
            f"<td>{escape(saga.customer_id)}</td><td>{_badge(saga.state)}</td>"
            f"<td class='outcome'>{escape(saga.state.outcome)}</td>"
            f"<td>{_time(saga.started_at)}</td><td class='num'>{duration}</td>"
            f"<td>{_time(saga.last_event_at)}</td></tr>"
        )
    table = (
        "<table id='sagas'><tr><th>saga key</th><th>saga</th><th>customer</th><th>status</th>"
        "<th>outcome</th><th>started (UTC)</th><th>duration</th><th>last event</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else "<p id='no-sagas' class='muted'>No saga has started yet.</p>"
    )
    return page(
        "Sagas",
        f"<h1>Sagas</h1><p class='muted'>The newest {limit} sagas, newest first "
        f"(<a href='/sagas?limit={min(limit * 2, 500)}'>more</a>, "
        f"<a href='/sagas?limit={limit}'>refresh</a>). "
        + _shapes_text(contracts.sagas())
        + "</p>"
        + table,
    )


def _timeline_rows(events: list[TimelineEvent]) -> str:
    rows = []
    for index, event in enumerate(events, 1):
        hop = "-" if event.hop_ms is None else f"{event.hop_ms:.1f} ms"
        cause = short_name(event.cause_type) if event.cause_type else "command"
        note = ""
        if event.copy:
            note = " <span class='muted'>(replayed copy"
            note += f" of dead letter {escape(event.replay_of)})" if event.replay_of else ")"
            note += "</span>"
        classes = f"event {event.kind}" + (" copy" if event.copy else "")
        rows.append(
            f"<tr class='{classes}' data-event='{escape(event.name)}'>"
            f"<td class='num'>{index}</td><td>{_time(event.at)}</td>"
            f"<td class='num'>+{event.offset_ms:.1f} ms</td>"
            f"<td>{escape(event.service)}</td>"
            f"<td class='event'>{escape(event.name)}{note}</td>"
            f"<td class='num'>{hop}</td><td>{escape(cause)}</td>"
            f"<td><details><summary><code>{escape(event.stream)} #{event.seq}</code></summary>"
            f"<pre class='payload'>{_json(event.payload)}</pre></details></td></tr>"
        )
    return "".join(rows)


def _letters_table(letters: Iterable[dlq.DeadLetter], *, with_order: bool = True) -> str:
    rows = []
    for letter in letters:
        flags = ""
        if letter.alarm:
            flags += "<span class='badge alarm'>ALARM</span> "
        if letter.compensated:
            flags += "<span class='badge compensated'>compensated</span> "
        if letter.is_parked_notice:
            flags += "<span class='badge'>parked outbox row</span> "
        if letter.suspect:
            why = escape("; ".join(letter.suspicions))
            flags += f"<span class='badge alarm suspect' title='{why}'>SUSPECT</span> "
        elif letter.source_gone:
            flags += f"<span class='badge' title='{escape(letter.source_gone)}'>source gone</span> "
        order_id = order_id_of_letter(letter)
        order_cell = (
            f"<td><a class='saga-link' href='{saga_href(order_id)}'><code>{escape(order_id)}"
            "</code></a></td>"
            if with_order
            else ""
        )
        replay = (
            ""
            if letter.is_parked_notice or letter.suspect or letter.source_gone
            else f"<form class='inline' method='post' action='{letter_href(letter.seq)}/replay'>"
            f"<button type='submit' class='replay' data-seq='{letter.seq}'>Replay</button></form>"
        )
        rows.append(
            f"<tr class='letter' data-seq='{letter.seq}'>"
            f"<td class='num'><a href='{letter_href(letter.seq)}'>{letter.seq}</a></td>"
            f"<td>{_epoch(letter.dead_lettered_at)}</td><td>{escape(letter.service)}</td>"
            f"<td>{escape(short_name(letter_event_type(letter)))}</td>"
            f"<td>{escape(letter.reason)}</td><td>{flags}</td>{order_cell}"
            f"<td>{replay}</td></tr>"
        )
    order_header = "<th>order (saga)</th>" if with_order else ""
    return (
        "<table id='dead-letters'><tr><th>seq</th><th>dead-lettered (UTC)</th><th>service</th>"
        f"<th>event</th><th>reason</th><th></th>{order_header}<th></th></tr>"
        + "".join(rows)
        + "</table>"
    )


def saga_page(detail: SagaDetail) -> str:
    state = detail.state
    if not detail.events:
        return page(
            "Saga not found",
            f"<h1>Saga <code>{escape(detail.order_id)}</code></h1>"
            "<p id='no-events' class='notice error'>No event of this saga is in the streams"
            " (a wrong order id, or its events have aged out).</p>",
        )
    letters = ""
    if detail.dead_letters:
        letters = "<h2>Dead letters of this saga</h2>" + _letters_table(
            detail.dead_letters, with_order=False
        )
    body = (
        f"<h1>Saga <code id='order-id'>{escape(detail.order_id)}</code> {_badge(state)}</h1>"
        f"<p>Outcome: <strong id='outcome'>{escape(state.outcome)}</strong>. "
        f"{len(detail.events)} events, "
        f"{detail.events[-1].offset_ms:.1f} ms from the first to the last."
        + ("" if state.done else " <span class='muted'>(refreshing every 2 s)</span>")
        + "</p><h2>Path</h2><p class='muted'>Arrows go from an event to what it caused, with"
        " the service that reacted, in the order it happened; failures red, compensations"
        " amber.</p>"
        f"<div class='diagram'>{saga_svg(detail.events)}</div>"
        f"{letters}<h2>Timeline</h2>"
        "<table id='timeline'><tr><th>#</th><th>time (UTC)</th><th>since start</th>"
        "<th>service</th><th>event</th><th>hop latency</th><th>caused by</th>"
        "<th>payload</th></tr>"
        f"{_timeline_rows(detail.events)}</table>"
    )
    return page(f"Saga {detail.order_id}", body, refresh_s=None if state.done else 2)


def dead_letters_page(letters: list[dlq.DeadLetter]) -> str:
    if not letters:
        content = "<p id='no-dead-letters' class='muted'>No dead letters.</p>"
    else:
        content = _letters_table(letters)
    return page(
        "Dead letters",
        "<h1>Dead letters</h1><p class='muted'>What a service gave up on, newest first. "
        "<em>Replay</em> publishes the original event again, read back from its stream: "
        "services that handled it skip it (their inbox has its id), the one that gave up "
        "handles it now. Fix the cause first. A <em>suspect</em> letter (its claims do not "
        "match its source event or its service) and one whose event has aged out of its "
        "stream are not replayed.</p>" + content,
    )


def dead_letter_page(
    letter: dlq.DeadLetter,
    payload: object,
    replays: list[Replayed],
    *,
    replayed_now: str = "",
    error: str = "",
) -> str:
    order_id = order_id_of_letter(letter)
    notices = ""
    if replayed_now:
        notices += (
            f"<p id='replayed' class='notice'>Replayed: published again as Nats-Msg-Id "
            f"<code>{escape(replayed_now)}</code>. Follow the saga: "
            f"<a class='saga-link' href='{saga_href(order_id)}'>{escape(order_id)}</a></p>"
        )
    if error:
        notices += f"<p id='error' class='notice error'>{escape(error)}</p>"
    facts = [
        ("service", escape(letter.service)),
        ("event", escape(letter_event_type(letter))),
        ("reason", escape(letter.reason)),
        ("detail", f"<pre>{escape(letter.detail)}</pre>"),
        ("original subject", f"<code>{escape(letter.subject)}</code>"),
        ("deliveries", str(letter.deliveries)),
        ("dead-lettered (UTC)", _epoch(letter.dead_lettered_at)),
        ("alarm", "yes" if letter.alarm else "no"),
        ("compensated", "yes" if letter.compensated else "no"),
        *(("SUSPECT", f"<span class='suspect'>{escape(why)}</span>") for why in letter.suspicions),
        *((("not replayable", escape(letter.source_gone)),) if letter.source_gone else ()),
        (
            "saga",
            f"<a class='saga-link' href='{saga_href(order_id)}'><code>{escape(order_id)}"
            "</code></a>",
        ),
    ]
    replay_rows = "".join(
        f"<li>{escape(r.stream)} #{r.seq} <code>{escape(r.msg_id)}</code></li>" for r in replays
    )
    button = (
        "<p class='muted'>This is a notice of an outbox row the service parked: the event is in"
        " its database. Fix the cause, then <code>choreo dlq unpark</code> it.</p>"
        if letter.is_parked_notice
        else f"<form method='post' action='{letter_href(letter.seq)}/replay'>"
        f"<button type='submit' id='replay' class='replay'>Replay</button></form>"
    )
    body = (
        f"<h1>Dead letter {letter.seq}</h1>{notices}"
        "<table id='letter'>"
        + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
        + "</table>"
        + button
        + (f"<h2>Replays</h2><ul id='replays'>{replay_rows}</ul>" if replays else "")
        + f"<h2>Payload</h2><pre class='payload'>{_json(payload)}</pre>"
        "<h2>Headers</h2><table id='headers'>"
        + "".join(
            f"<tr><th>{escape(k)}</th><td><code>{escape(v)}</code></td></tr>"
            for k, v in masked_headers(letter.headers).items()
        )
        + "</table>"
    )
    return page(f"Dead letter {letter.seq}", body)


def error_page(title: str, message: str) -> str:
    return page(
        title, f"<h1>{escape(title)}</h1><p id='error' class='notice error'>{escape(message)}</p>"
    )
