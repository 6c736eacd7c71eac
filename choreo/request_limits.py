"""What a request may cost, from the rules its contract declares (``buf.validate``).

A gRPC server accepts messages up to 4 MB by default, and decoding and validating one is work
done on the service's event loop before any rule can refuse it: 100,000 invalid order lines
(2.2 MB) took 1.9 s to refuse, and every other call waited behind them. Two bounds keep the
cost of any request small:

- :func:`max_receive_bytes`: the largest *valid* request of a service's methods, from the
  declared limits (string lengths, item counts, nested messages), with a margin. A larger
  message cannot be valid, and gRPC refuses it (``RESOURCE_EXHAUSTED``) before it is read
  into Python at all. A service whose requests are not all bounded gets
  :data:`UNBOUNDED_DEFAULT_BYTES`, still well under gRPC's default.
- :func:`repeated_limits` and :func:`count_violations`: a repeated field with more items than
  its ``max_items`` is refused on its count alone, before each item is validated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from buf.validate import validate_pb2
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

# For services whose requests the rules do not bound (a string without max_len).
UNBOUNDED_DEFAULT_BYTES = 1024 * 1024
# Never below this: health checks, reflection and small requests always fit.
FLOOR_BYTES = 16 * 1024
MARGIN = 2  # the largest valid request times this

_FIXED_PATTERN = re.compile(r"^\^\[[^\]]*\]\{(\d+)\}\$$")  # "^[A-Z]{3}$": exactly 3
_NESTING_LIMIT = 16
_VARINT_MAX = 10
_SCALAR_BYTES = {
    FieldDescriptor.TYPE_DOUBLE: 8,
    FieldDescriptor.TYPE_FLOAT: 4,
    FieldDescriptor.TYPE_FIXED64: 8,
    FieldDescriptor.TYPE_SFIXED64: 8,
    FieldDescriptor.TYPE_FIXED32: 4,
    FieldDescriptor.TYPE_SFIXED32: 4,
    FieldDescriptor.TYPE_BOOL: 1,
}


def _rules(field: FieldDescriptor) -> validate_pb2.FieldRules | None:
    options = field.GetOptions()
    if not options.HasExtension(validate_pb2.field):
        return None
    rules: validate_pb2.FieldRules = options.Extensions[validate_pb2.field]
    return rules


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _string_bytes(field: FieldDescriptor) -> int | None:
    """The most bytes a valid value of a string or bytes field holds, None if unbounded."""
    rules = _rules(field)
    if rules is None:
        return None
    if field.type == FieldDescriptor.TYPE_BYTES:
        if rules.bytes.HasField("len"):
            return int(rules.bytes.len)
        return int(rules.bytes.max_len) if rules.bytes.HasField("max_len") else None
    string = rules.string
    # Lengths count characters: up to 4 bytes each in UTF-8.
    if string.HasField("len"):
        return 4 * int(string.len)
    if string.HasField("max_len"):
        return 4 * int(string.max_len)
    if string.HasField("max_bytes"):
        return int(string.max_bytes)
    fixed = _FIXED_PATTERN.match(string.pattern) if string.HasField("pattern") else None
    return int(fixed.group(1)) if fixed else None


def _value_bytes(field: FieldDescriptor, depth: int) -> int | None:
    """The most bytes one value of ``field`` encodes to (without its tag)."""
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        content = _string_bytes(field)
    elif field.message_type is not None:
        content = max_encoded_size(field.message_type, depth + 1)
    else:
        return _SCALAR_BYTES.get(field.type, _VARINT_MAX)
    return None if content is None else _varint_size(content) + content


def max_encoded_size(descriptor: Descriptor, depth: int = 0) -> int | None:
    """The largest encoding of a message that keeps every declared rule, or None when some
    field is not bounded by one (a string without a length limit, a map, unbounded repeats).
    An upper bound: every field present at its largest (oneofs counted whole)."""
    if depth > _NESTING_LIMIT:
        return None  # recursive types are not bounded by their rules
    total = 0
    for field in descriptor.fields:
        tag = _varint_size(field.number << 3)
        value = _value_bytes(field, depth)
        if value is None:
            return None
        if field.is_repeated:
            rules = _rules(field)
            if (
                rules is None
                or not rules.repeated.HasField("max_items")
                or (field.message_type is not None and field.message_type.GetOptions().map_entry)
            ):
                return None
            total += int(rules.repeated.max_items) * (tag + value)
        else:
            total += tag + value
    return total


def max_receive_bytes(grpc_services: Iterable[str]) -> int:
    """The gRPC receive limit for a server of these services (full names): the largest valid
    request of any of their methods, times :data:`MARGIN`; :data:`UNBOUNDED_DEFAULT_BYTES`
    when one of them is not bounded by its rules."""
    pool = descriptor_pool.Default()
    largest = 0
    for name in grpc_services:
        try:
            service = pool.FindServiceByName(name)
        except KeyError:
            return UNBOUNDED_DEFAULT_BYTES
        for method in service.methods:
            size = max_encoded_size(method.input_type)
            if size is None:
                return UNBOUNDED_DEFAULT_BYTES
            largest = max(largest, size)
    return max(FLOOR_BYTES, MARGIN * largest)


def repeated_limits(descriptor: Descriptor) -> dict[str, int]:
    """The top-level repeated fields of a message with a declared ``max_items``."""
    limits = {}
    for field in descriptor.fields:
        rules = _rules(field)
        if field.is_repeated and rules is not None and rules.repeated.HasField("max_items"):
            limits[field.name] = int(rules.repeated.max_items)
    return limits


def count_violations(message: Message, limits: dict[str, int]) -> list[tuple[str, str]]:
    """The repeated fields of ``message`` with more items than allowed: a check of counts
    only, as cheap as ``len``, to run before the full validation looks at every item."""
    found = []
    for name, most in limits.items():
        count = len(getattr(message, name))
        if count > most:
            found.append((name, f"has {count} items; at most {most} are allowed"))
    return found
