"""The console's web server (aiohttp): HTML pages for people, the same data as JSON for scripts.

Pages: ``/sagas``, ``/sagas/<order id>``, ``/dead-letters``, ``/dead-letters/<seq>`` and the
replay form (``POST /dead-letters/<seq>/replay``, then a redirect to the letter). API:
``/api/sagas``, ``/api/sagas/<order id>``, ``/api/dead-letters``, ``/api/dead-letters/<seq>``,
``POST /api/dead-letters/<seq>/replay``.

There is no login: ``choreo console`` binds to loopback by default. A replay is a POST, and a
POST whose ``Origin`` is another site is refused, so a page elsewhere cannot replay letters
through an operator's browser.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from choreo import dlq, subjects
from choreo.console import reads, views
from choreo.console.model import decode_payload, letter_event_type, letter_json
from choreo.errors import ConfigurationError
from choreo.redact import redact_url

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_ORDER_ID = 128
JS_KEY = web.AppKey("js", object)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadInput(Exception):
    """A request the console cannot serve as asked: answered 400 with this message."""


class NotThere(Exception):
    """Something the request names does not exist: answered 404 with this message."""


def _js(request: web.Request) -> Any:
    return request.app[JS_KEY]


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= reads.MAX_SAGAS:
        raise BadInput(f"limit={raw!r}: give a whole number from 1 to {reads.MAX_SAGAS}")
    return int(raw)


def _order_id(request: web.Request) -> str:
    order_id = request.match_info["order_id"]
    if len(order_id) > MAX_ORDER_ID or any(not ch.isprintable() or ch.isspace() for ch in order_id):
        raise BadInput(
            f"order id {order_id[:40]!r}: an order id is at most {MAX_ORDER_ID} printable"
            " characters without spaces"
        )
    return order_id


def _seq(request: web.Request) -> int:
    raw = request.match_info["seq"]
    if not raw.isdigit() or int(raw) < 1:
        raise BadInput(f"dead letter {raw!r}: give its sequence number (a whole number >= 1)")
    return int(raw)


async def _letter(js: Any, seq: int) -> dlq.DeadLetter:
    try:
        return await dlq.get_dead_letter(js, seq)
    except NotFoundError:
        raise NotThere(f"no dead letter {seq} in {subjects.DLQ_STREAM}") from None


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None  # "null": a sandboxed or file page; no header: not a browser form
    return urlsplit(origin).netloc == request.host


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn what went wrong into a clear answer: JSON under /api/, a page elsewhere."""

    def answer(status: int, title: str, message: str) -> web.Response:
        if _is_api(request):
            return web.json_response({"error": message}, status=status)
        return web.Response(
            text=views.error_page(title, message), status=status, content_type="text/html"
        )

    if request.method == "POST" and not _same_origin(request):
        return answer(403, "Refused", "a replay must come from the console's own pages")
    try:
        return await handler(request)
    except BadInput as exc:
        return answer(400, "Bad request", str(exc))
    except NotThere as exc:
        return answer(404, "Not found", str(exc))
    except (NatsError, TimeoutError) as exc:
        return answer(
            503,
            "Broker unavailable",
            f"the broker did not answer ({type(exc).__name__}); try again once it is back",
        )


# --- pages -------------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/sagas")


async def sagas_page(request: web.Request) -> web.StreamResponse:
    limit = _limit(request)
    sagas = await reads.recent_sagas(_js(request), limit)
    return _html(views.sagas_page(sagas, limit))


async def saga_page(request: web.Request) -> web.StreamResponse:
    detail = await reads.saga_detail(_js(request), _order_id(request))
    return _html(views.saga_page(detail), status=200 if detail.events else 404)


async def dead_letters_page(request: web.Request) -> web.StreamResponse:
    return _html(views.dead_letters_page(await reads.dead_letters(_js(request))))


async def dead_letter_page(request: web.Request) -> web.StreamResponse:
    js = _js(request)
    letter = await _letter(js, _seq(request))
    return _html(
        views.dead_letter_page(
            letter,
            _payload(letter),
            await reads.replays_of(js, letter),
            replayed_now=request.query.get("replayed", ""),
        )
    )


async def replay_form(request: web.Request) -> web.StreamResponse:
    js = _js(request)
    letter = await _letter(js, _seq(request))
    try:
        msg_id = await dlq.replay(js, letter.seq)
    except dlq.ReplayRefused as notice:  # a notice, or a letter already resolved
        page = views.dead_letter_page(
            letter, _payload(letter), await reads.replays_of(js, letter), error=str(notice)
        )
        return _html(page, status=409)
    location = views.letter_href(letter.seq) + "?" + _query(replayed=msg_id)
    raise web.HTTPSeeOther(location)


def _query(**values: str) -> str:
    return urlencode(values)


def _payload(letter: dlq.DeadLetter) -> object:
    if letter.is_parked_notice:
        return None
    return decode_payload(letter_event_type(letter), letter.body)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


# --- the JSON API ------------------------------------------------------------------------


async def api_sagas(request: web.Request) -> web.StreamResponse:
    sagas = await reads.recent_sagas(_js(request), _limit(request))
    return web.json_response({"sagas": [saga.as_json() for saga in sagas]})


async def api_saga(request: web.Request) -> web.StreamResponse:
    order_id = _order_id(request)
    detail = await reads.saga_detail(_js(request), order_id)
    if not detail.events:
        raise NotThere(f"no event of saga {order_id} is in the streams")
    return web.json_response(
        {
            "order_id": detail.order_id,
            "status": detail.state.status,
            "notified": detail.state.notified,
            "done": detail.state.done,
            "outcome": detail.state.outcome,
            "events": [event.as_json() for event in detail.events],
            "dead_letters": [letter_json(letter) for letter in detail.dead_letters],
        }
    )


async def api_dead_letters(request: web.Request) -> web.StreamResponse:
    letters = await reads.dead_letters(_js(request))
    return web.json_response({"dead_letters": [letter_json(letter) for letter in letters]})


async def api_dead_letter(request: web.Request) -> web.StreamResponse:
    js = _js(request)
    letter = await _letter(js, _seq(request))
    data = letter_json(letter, with_payload=True)
    data["replays"] = [
        {"stream": r.stream, "seq": r.seq, "msg_id": r.msg_id}
        for r in await reads.replays_of(js, letter)
    ]
    return web.json_response(data)


async def api_replay(request: web.Request) -> web.StreamResponse:
    js = _js(request)
    letter = await _letter(js, _seq(request))
    try:
        msg_id = await dlq.replay(js, letter.seq)
    except dlq.ReplayRefused as notice:  # a notice, or a letter already resolved
        return web.json_response({"error": str(notice)}, status=409)
    return web.json_response({"seq": letter.seq, "msg_id": msg_id, "subject": letter.subject})


def build_app(js: Any) -> web.Application:
    """The console on a JetStream context (the caller owns the connection)."""
    app = web.Application(middlewares=[errors])
    app[JS_KEY] = js
    app.add_routes(
        [
            web.get("/", index),
            web.get("/sagas", sagas_page),
            web.get("/sagas/{order_id}", saga_page),
            web.get("/dead-letters", dead_letters_page),
            web.get("/dead-letters/{seq}", dead_letter_page),
            web.post("/dead-letters/{seq}/replay", replay_form),
            web.get("/api/sagas", api_sagas),
            web.get("/api/sagas/{order_id}", api_saga),
            web.get("/api/dead-letters", api_dead_letters),
            web.get("/api/dead-letters/{seq}", api_dead_letter),
            web.post("/api/dead-letters/{seq}/replay", api_replay),
        ]
    )
    return app


# --- choreo console ----------------------------------------------------------------------


async def run_console(args: argparse.Namespace) -> int:
    from choreo.status import connect_operator, operator_login

    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port {args.port}: choose a port from 1 to 65535 (0: any)")
    login = operator_login(args.nats_url, args.data_dir)  # as every operator command logs in
    url = login.url
    nc = await connect_operator(login, "choreo-console")
    runner = web.AppRunner(build_app(nc.jetstream(timeout=10)), access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}): choose"
                " another with --port / --host"
            ) from None
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        print(
            f"choreo console: http://{shown}:{port}/   broker {redact_url(url)}   Ctrl-C stops",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await nc.close()
    return 0
