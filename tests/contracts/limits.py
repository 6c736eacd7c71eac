"""The largest values the declared request rules admit, read from the descriptors.

Tests build "maximal valid" requests from the ``buf.validate`` options in ``proto/`` rather than
from numbers written here, so a loosened limit in a contract shows up in the size checks.
"""

from __future__ import annotations

import re
from typing import cast

from buf.validate import validate_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# Tried in order: the first one a field's pattern admits is repeated up to the field's length,
# so free text gets 4-byte UTF-8 characters (the most bytes per counted character).
WIDEST_FIRST = ("\U0001f600", "é", "A", "a", "0", "_")
# A string whose length the rules do not bound is a contract bug; this is where we stop looking.
UNBOUNDED = 4096


def rules(field: FieldDescriptor) -> validate_pb2.FieldRules:
    return field.GetOptions().Extensions[validate_pb2.field]


def longest_string(field: FieldDescriptor) -> str:
    """The longest value (in UTF-8 bytes) of a string field that its declared rules admit.

    The length is ``max_len`` when declared, else the longest repetition the pattern accepts
    (``^[A-Z]{3}$``); a field with neither limit raises, because nothing bounds it."""
    string = rules(field).string
    pattern = re.compile(string.pattern) if string.HasField("pattern") else None
    for char in WIDEST_FIRST:
        if string.HasField("max_len"):
            candidate = char * string.max_len
            if pattern is None or pattern.fullmatch(candidate):
                return candidate
            continue
        if pattern is None:
            break
        lengths = [n for n in range(1, UNBOUNDED + 1) if pattern.fullmatch(char * n)]
        if lengths and lengths[-1] == UNBOUNDED:
            break
        if lengths:
            return char * lengths[-1]
    raise AssertionError(f"{field.full_name}: no declared length limit")


def largest_int(field: FieldDescriptor) -> int:
    """The largest value an integer field's rules admit (the type's maximum when unbounded)."""
    field_rules = rules(field)
    kind = field_rules.WhichOneof("type")
    if kind is not None:
        numeric = getattr(field_rules, kind)
        if numeric.HasField("lte"):
            return int(numeric.lte)
        if numeric.HasField("lt"):
            return int(numeric.lt) - 1
    if field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return 2**63 - 1
    return 2**31 - 1


def max_items(field: FieldDescriptor) -> int:
    repeated = rules(field).repeated
    assert repeated.HasField("max_items"), f"{field.full_name}: no declared item limit"
    return repeated.max_items


def fill_maximal(message: Message) -> Message:
    """Sets every field of ``message`` to the largest value its rules admit, recursively;
    repeated fields get their maximal count of items. Enums get their largest number."""
    # The stubs type DESCRIPTOR as the pure-Python or the upb class; both have these members.
    fields = cast("list[FieldDescriptor]", list(message.DESCRIPTOR.fields))
    for field in fields:
        if field.is_repeated:
            container = getattr(message, field.name)
            for _ in range(max_items(field)):
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    fill_maximal(container.add())
                else:
                    container.append(_scalar(field))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            fill_maximal(getattr(message, field.name))
        else:
            setattr(message, field.name, _scalar(field))
    return message


def _scalar(field: FieldDescriptor) -> object:
    if field.type == FieldDescriptor.TYPE_STRING:
        return longest_string(field)
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return max(value.number for value in field.enum_type.values)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    return largest_int(field)
