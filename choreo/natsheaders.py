"""NATS header blocks, written and read with fewer instructions than nats-py 2.16 spends.

Every event carries 16 headers (the CloudEvents attributes and ``Nats-Msg-Id``: the wire
contract of ``docs/downstream.md``). nats-py handles a header at a time in Python: to publish,
a regular-expression match of the name, a strip, a translate and two encodes per header; to
receive, a partition, two strips, two decodes and a generator over the name's characters per
line. Counted under callgrind (``python -m tools.callgrind.budget``) that was some 11,000
instructions per header each way: a quarter of what a service spends per event.

Here a header block is one ``join``, one regular expression and one ``encode`` to write, and
two regular expressions (a check, then the lines) to read, with the same result as nats-py's
on every block this fast path accepts. A block it does not accept (a name that is not a
token, a value with a line break or whitespace around it; bytes that are not printable ASCII
on the way in) goes through nats-py's own code, so its checks and its error
(``BadHeaderError``) stay exactly as they were.
``tests/properties/test_natsheaders_properties.py`` compares both ways on generated blocks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The lines nats-py would write unchanged: a name that is a token (nats-py's own rule,
# ``_HEADER_KEY_RE``), and a value of printable ASCII words with single spaces between them
# (nothing nats-py strips or replaces). Possessive, so a line is read once, never backtracked.
_CLEAN_LINES = re.compile(r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]++: (?:[!-~]++(?: ++[!-~]++)*+)?\r\n)*+")

HEADER_LINE = "NATS/1.0\r\n"


def encode_block(headers: Mapping[str, str]) -> bytes | None:
    """The header block nats-py would write for ``headers``, byte for byte, or None where
    nats-py's own encoding must run: a name that is not a token (nats-py refuses it), a value
    with a line break or surrounding whitespace (nats-py changes those), or one that is not
    printable ASCII (rare in the runtime's headers; nats-py writes it as well)."""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # The count: a value holding "\r\nname: x" would otherwise pass as two clean lines.
    if _CLEAN_LINES.fullmatch(text) is None or text.count("\n") != len(headers):
        return None
    return f"{HEADER_LINE}{text}\r\n".encode()


# A block of printable ASCII lines ``Name: value`` (no status line; nats-py handles that).
_PRINTABLE_BLOCK = re.compile(r"(?:[!-9;-~]+:[ -~]*\r\n)*(?:\r\n)*")
# One line: the name, then the value without the spaces around it: runs of spaces and
# non-spaces, possessive (a lazy value costs twice the instructions, backtracking at every
# character).
_LINE = re.compile(r"([!-9;-~]+):[ ]*+((?:[ ]*+[!-~]++)*+)[ ]*+\r\n")


def parse_lines(raw: bytes) -> dict[str, str] | None:
    """The headers of ``raw`` (the lines after ``NATS/1.0\\r\\n``) as nats-py's
    ``Client._parse_header_lines`` reads them, or None where that one must run (bytes outside
    printable ASCII, a line without a colon)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\r\n"):
        text += "\r\n"  # nats-py reads a last line without its line break too
    if _PRINTABLE_BLOCK.fullmatch(text) is None:
        return None
    return dict(_LINE.findall(text))
