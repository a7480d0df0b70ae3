"""AMQP 0-9-1 frames for the two hot paths, publishing and delivery, packed and parsed with ``struct``.

py-amqp builds every frame through generic serializers, writes each message with its own syscall
and reads each frame with three ``recv`` calls. At tens of thousands of messages a second that is
where the time goes, so ``rabbitmq.py`` sends publishes through ``publish_frames`` into one write
buffer and reads the socket through ``FrameReader``, a buffer that one ``recv`` fills with many
frames. Everything else on the connection is still py-amqp's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

METHOD, HEADER, BODY = 1, 2, 3
FRAME_END = b"\xce"
BASIC_DELIVER = struct.pack(">HH", 60, 60)
_PUBLISH = struct.pack(">HHH", 60, 40, 0)  # basic.publish, reserved short
_FRAME = struct.Struct(">BHI")
_HEADER = struct.Struct(">HHQH")  # class, weight, body size, property flags
_DELIVERY_TAG = struct.Struct(">QB")
# basic property flags, in the order their values follow
_CONTENT_TYPE, _DELIVERY_MODE, _MESSAGE_ID, _TYPE, _USER_ID = 1 << 15, 1 << 12, 1 << 7, 1 << 5, 1 << 4
_FLAGS = _CONTENT_TYPE | _DELIVERY_MODE | _MESSAGE_ID | _TYPE | _USER_ID
_READ_SIZE = 256 * 1024


def shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"AMQP short string longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(raw),)) + raw


def publish_frames(
    channel: int,
    frame_max: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    *,
    content_type: str,
    message_id: str,
    type_: str,
    user_id: str,
    mandatory: bool = True,
) -> bytes:
    """basic.publish with a persistent message: method, content header and body frames, ready to write."""
    method = _PUBLISH + shortstr(exchange) + shortstr(routing_key) + (b"\x01" if mandatory else b"\x00")
    header = (
        _HEADER.pack(60, 0, len(body), _FLAGS)
        + shortstr(content_type)
        + b"\x02"
        + shortstr(message_id)
        + shortstr(type_)
        + shortstr(user_id)
    )
    parts = [_FRAME.pack(METHOD, channel, len(method)), method, FRAME_END,
             _FRAME.pack(HEADER, channel, len(header)), header, FRAME_END]
    step = frame_max - 8  # a frame's header and end octet count against frame_max
    for start in range(0, len(body), step):
        chunk = body[start : start + step]
        parts += (_FRAME.pack(BODY, channel, len(chunk)), chunk, FRAME_END)
    return b"".join(parts)


def parse_deliver(payload: bytes) -> tuple[int, bool, bytes]:
    """basic.deliver's arguments after the method id: (delivery tag, redelivered, consumer tag). The consumer
    tag, not the routing key, tells which queue a delivery came from: a sender chooses the routing key, and
    with a CC or BCC header a message reaches queues its routing key does not name."""
    at = 4 + 1 + payload[4]
    consumer_tag = payload[5:at]
    tag, redelivered = _DELIVERY_TAG.unpack_from(payload, at)
    return tag, bool(redelivered & 1), consumer_tag


def body_size(header: bytes) -> int:
    return int(_HEADER.unpack_from(header, 0)[2])


class FrameReader:
    """Reads the socket in large chunks and hands out whole frames; stands in for py-amqp's ``read_frame``."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self._buf = b""
        self._pos = 0

    def has_frame(self) -> bool:
        have = len(self._buf) - self._pos
        return have >= 7 and have >= int(_FRAME.unpack_from(self._buf, self._pos)[2]) + 8

    def _fill(self, n: int) -> None:
        """Make at least ``n`` unread bytes available; a timeout or error loses nothing."""
        parts = [self._buf[self._pos :]]
        have = len(parts[0])
        try:
            while have < n:
                chunk = self._recv(max(_READ_SIZE, n - have))
                if not chunk:
                    raise OSError("Server unexpectedly closed connection")
                parts.append(chunk)
                have += len(chunk)
        finally:
            self._buf, self._pos = b"".join(parts), 0

    def frame(self) -> tuple[int, int, bytes]:
        """The next whole frame as (type, channel, payload). Blocks per the socket's timeout."""
        if not self.has_frame():
            if len(self._buf) - self._pos < 7:
                self._fill(7)
            self._fill(int(_FRAME.unpack_from(self._buf, self._pos)[2]) + 8)
        pos = self._pos
        kind, channel, size = _FRAME.unpack_from(self._buf, pos)
        end = pos + 7 + size
        if self._buf[end] != 0xCE:
            raise OSError(f"AMQP frame of type {kind} does not end with 0xCE")
        self._pos = end + 1
        return kind, channel, self._buf[pos + 7 : end]
