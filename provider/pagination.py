"""Opaque keyset-pagination cursors: base64url of the last row's key parts."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

from provider.errors import ValidationFailed

SEPARATOR = "|"


class InvalidCursor(ValidationFailed):
    code = "invalid_cursor"
    title = "The cursor is not valid."


def encode_cursor(*parts: str) -> str:
    raw = SEPARATOR.join(parts).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, parts: int) -> list[str]:
    """The key parts of a cursor, or InvalidCursor: never an error from deeper down."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        raise InvalidCursor() from None
    values = raw.split(SEPARATOR, parts - 1)
    if len(values) != parts or not all(values):
        raise InvalidCursor()
    return values


def decode_time_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """A (timestamp, id) cursor's key, the timestamp in UTC; InvalidCursor for anything
    else: a naive or unparsable time, one that has no UTC equivalent (year 1 with a
    positive offset), an id that is no UUID."""
    at_text, id_text = decode_cursor(cursor, 2)
    try:
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise InvalidCursor()
        return at.astimezone(UTC), uuid.UUID(id_text)
    except (ValueError, OverflowError):
        raise InvalidCursor() from None
