"""The path one saga took, as inline SVG (no script, no external asset).

Nodes are the event types the saga emitted, plus the command that started it; an arrow goes
from each event to the events it caused, labelled with the service that reacted, numbered in
the order the effects happened. Columns are hops from the command (``ce-chaindepth``), so the
saga reads top to bottom. Business failures are drawn red, compensations amber.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from choreo import contracts, subjects
from choreo.console.model import TimelineEvent, kind_of, short_name

COMMAND = "command"  # the node every saga starts from (PlaceOrder)
NODE_W = 180
NODE_H = 34
SLOT_W = 220  # horizontal distance between nodes of one rank
RANK_H = 84  # vertical distance between ranks (hops)
MARGIN = 20


@dataclass(frozen=True)
class Node:
    key: str  # full event type, or COMMAND
    label: str
    kind: str  # command, step, failure, compensation
    rank: int  # hops from the command
    slot: int  # position within its rank, in the order first seen

    @property
    def x(self) -> int:
        return MARGIN + self.slot * SLOT_W

    @property
    def y(self) -> int:
        return MARGIN + self.rank * RANK_H


@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    service: str
    order: int  # 1 for the first effect of the saga, 2 for the next ...


def command_name(events: list[TimelineEvent]) -> str:
    """The RPC whose call started the saga (the one the contracts say emits its first event),
    e.g. ``PlaceOrder``; ``command`` when no RPC declares it."""
    starts = [event.event_type for event in events if not event.cause_type]
    for command, emitted in contracts.command_emits().items():
        if any(subjects.same_event_type(start, event) for start in starts for event in emitted):
            return command.rsplit(".", 1)[-1]
    return "command"


def saga_graph(events: list[TimelineEvent]) -> tuple[list[Node], list[Arrow]]:
    """Nodes and arrows of the saga's path (later copies of an event, i.e. replays, add no
    node: the event already happened once)."""
    firsts = [event for event in events if not event.copy]
    ranks: dict[str, int] = {}
    for event in firsts:
        ranks.setdefault(event.event_type, event.chain_depth + 1)
    nodes = [Node(COMMAND, command_name(firsts), "command", 0, 0)] if firsts else []
    slots_used: dict[int, int] = {0: 1}
    for event_type, rank in ranks.items():  # first-seen order: earliest on the left
        slot = slots_used.get(rank, 0)
        slots_used[rank] = slot + 1
        nodes.append(Node(event_type, short_name(event_type), kind_of(event_type), rank, slot))
    arrows: list[Arrow] = []
    seen: set[tuple[str, str]] = set()
    for event in firsts:
        source = event.cause_type or COMMAND
        if (source, event.event_type) in seen:
            continue
        seen.add((source, event.event_type))
        arrows.append(Arrow(source, event.event_type, event.service, len(arrows) + 1))
    return nodes, arrows


_STYLE = """
.node rect { fill: #eef4ff; stroke: #3b6fd8; stroke-width: 1.5; }
.node.command rect { fill: #f3f3f3; stroke: #777; }
.node.failure rect { fill: #fde8e8; stroke: #c62828; stroke-width: 2; }
.node.compensation rect { fill: #fff3dc; stroke: #d98a00; stroke-width: 2; }
.node text { font: 13px sans-serif; fill: #1b1b1b; }
.arrow path { fill: none; stroke: #6b7280; stroke-width: 1.3; }
.arrow text { font: 11px sans-serif; fill: #4b5563; }
.arrow rect { fill: #fff; opacity: 0.85; }
"""


def saga_svg(events: list[TimelineEvent]) -> str:
    """The diagram as an ``<svg>`` element (empty saga: an empty diagram saying so)."""
    nodes, arrows = saga_graph(events)
    if not nodes:
        return (
            '<svg id="saga-path" xmlns="http://www.w3.org/2000/svg" width="240" height="40"'
            ' data-nodes="0"><text x="10" y="24">no events</text></svg>'
        )
    width = max(node.x for node in nodes) + NODE_W + MARGIN
    height = max(node.y for node in nodes) + NODE_H + MARGIN
    by_key = {node.key: node for node in nodes}
    parts = [
        f'<svg id="saga-path" xmlns="http://www.w3.org/2000/svg" width="{width}"'
        f' height="{height}" viewBox="0 0 {width} {height}" role="img"'
        ' style="max-width: 100%; height: auto"'
        f' aria-label="the path of this saga" data-nodes="{len(nodes)}">',
        f"<style>{_STYLE}</style>",
        '<defs><marker id="arrowhead" viewBox="0 0 10 10" refX="10" refY="5"'
        ' markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="#6b7280"/></marker></defs>',
    ]
    for arrow in arrows:
        source, target = by_key.get(arrow.source), by_key.get(arrow.target)
        if source is None or target is None:
            continue
        x1, y1 = source.x + NODE_W // 2, source.y + NODE_H
        x2, y2 = target.x + NODE_W // 2, target.y
        bend = max(20, abs(y2 - y1) // 2)
        label = f"{arrow.order}. {arrow.service}"
        label_x, label_y = (x1 + x2) // 2 + 6, (y1 + y2) // 2 + 4
        parts.append(
            f'<g class="arrow" data-from="{escape(short_name(arrow.source))}"'
            f' data-to="{escape(short_name(arrow.target))}">'
            f'<path d="M {x1} {y1} C {x1} {y1 + bend}, {x2} {y2 - bend}, {x2} {y2}"'
            ' marker-end="url(#arrowhead)"/>'
            # A white patch under the label keeps it readable where arrows cross it.
            f'<rect x="{label_x - 2}" y="{label_y - 11}" width="{len(label) * 6 + 4}"'
            ' height="14" rx="3"/>'
            f'<text x="{label_x}" y="{label_y}">'
            f"{escape(label)}</text></g>"
        )
    for node in nodes:
        parts.append(
            f'<g class="node {node.kind}" data-event="{escape(node.label)}">'
            f'<rect x="{node.x}" y="{node.y}" width="{NODE_W}" height="{NODE_H}" rx="8"/>'
            f'<text x="{node.x + NODE_W // 2}" y="{node.y + NODE_H // 2 + 4}"'
            f' text-anchor="middle">{escape(node.label)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
