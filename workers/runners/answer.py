"""coglet's answer to a prediction, read as it arrives, and the limits on logs and output.

coglet answers a prediction with one JSON object that holds the whole output and every log
line. A model that prints 100 MB or returns 50 MB would cost the worker that much several
times over (the body, the parsed text, the copies after), so the answer is read chunk by
chunk and each top-level value is kept only up to its limit: a bigger one is measured and
dropped, never held whole. Logs over the limit come from coglet's log stream instead, which
keeps only their end (``LogTail``); an output over the limit fails the prediction saying so.

Pure code (no I/O), so each rule is tested alone.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import AsyncIterable, Mapping
from typing import Any

from replicant.runner import CogPrediction, RunnerSpec
from workers.runners.coglet import parse_answer, parse_prediction

# How much of the body is kept as is, for the text of an error answer.
HEAD_BYTES = 4096
# A key longer than this is not coglet's: the answer is not read further.
MAX_KEY_BYTES = 1024

_CONTAINER_STOP = re.compile(rb'["\[\]{}]')
_SCALAR_STOP = re.compile(rb"[,}\]\s]")
_SPACE = b" \t\r\n"


def megabytes(size: int) -> str:
    """A size for people: ``1.5 MB`` (of 2**20 bytes)."""
    return f"{size / 2**20:.1f} MB"


def logs_marker(dropped: int, limit: int) -> str:
    """The first line of logs whose beginning was left out."""
    return (
        f"[replicant: the first {megabytes(dropped)} of these logs were left out; "
        f"a prediction keeps the last {megabytes(limit)}]\n"
    )


def output_too_large(size: int, limit: int) -> str:
    """The error of a prediction whose output is over the limit."""
    return (
        f"The output is {megabytes(size)} as JSON, over the limit of {megabytes(limit)} "
        "(REPLICANT_MAX_OUTPUT_SIZE); return large results as files (cog.Path)"
    )


def tail_of(text: str, limit: int) -> str:
    """``text`` if it is at most ``limit`` characters, else its end after the marker."""
    if len(text) <= limit:
        return text
    return logs_marker(len(text) - limit, limit) + text[-limit:]


class LogTail:
    """Log text appended piece by piece, keeping its last ``limit`` characters."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._parts: collections.deque[str] = collections.deque()
        self._size = 0

    def append(self, text: str) -> None:
        """Add ``text``; what falls out of the last ``limit`` characters is counted, not kept."""
        if len(text) > self.limit:
            self.dropped += self._size + len(text) - self.limit
            self._parts.clear()
            text = text[-self.limit :]
            self._size = 0
        self._parts.append(text)
        self._size += len(text)
        while self._size > self.limit:
            first = self._parts.popleft()
            excess = self._size - self.limit
            if len(first) > excess:
                self._parts.appendleft(first[excess:])
                first = first[:excess]
            self._size -= len(first)
            self.dropped += len(first)

    def text(self) -> str:
        """The kept logs, after the marker when their beginning was left out."""
        kept = "".join(self._parts)
        return logs_marker(self.dropped, self.limit) + kept if self.dropped else kept


class AnswerReader:
    """A JSON object read chunk by chunk (``feed``, then ``finish``): each top-level value of at
    most its limit (``limits`` by key, else ``default_limit`` bytes of JSON) lands in
    ``values``; a bigger one is skipped and its size lands in ``oversized``. ``values`` is
    None when the body is not a JSON object; ``head`` holds its first bytes either way."""

    def __init__(
        self,
        limits: Mapping[str, int],
        default_limit: int,
        text_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.limits = limits
        self.default_limit = default_limit
        # Characters a string value may have once decoded (its JSON is longer: escapes).
        self.text_limits = text_limits or {}
        self.values: dict[str, Any] | None = {}
        self.oversized: dict[str, int] = {}
        self.head = bytearray()
        self._buf = bytearray()
        self._pos = 0
        self._state = "start"
        self._key = ""
        # The token being read (a key or a value): where it starts, and what was discarded.
        self._start = 0
        self._discarded = 0
        self._dropping = False
        self._depth = 0
        self._in_string = False
        self._scalar = False

    def feed(self, chunk: bytes) -> None:
        """Read the next bytes of the body."""
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        if self.values is None or self._state == "done":
            return
        self._buf += chunk
        try:
            self._advance()
        except ValueError:
            self._broken()
            return
        self._compact()

    def finish(self) -> None:
        """The body is over: an object left open was not a whole answer."""
        if self._state != "done":
            self._broken()

    def _broken(self) -> None:
        self.values = None
        self._buf = bytearray()
        self._state = "done"

    def _compact(self) -> None:
        """Forget what is read: before the token being kept, or all of one being skipped."""
        reading = self._state in ("key", "value")
        if reading and self._dropping:
            self._discarded += self._pos - self._start
            cut = self._pos
        else:
            cut = self._start if reading else self._pos
        if cut:
            del self._buf[:cut]
            self._pos -= cut
            self._start = max(self._start - cut, 0)

    def _skip_space(self) -> bool:
        """Move past whitespace; False when the buffer ends first."""
        buf, pos = self._buf, self._pos
        while pos < len(buf) and buf[pos] in _SPACE:
            pos += 1
        self._pos = pos
        return pos < len(buf)

    def _expect(self, allowed: bytes) -> int | None:
        """The next non-space byte (one of ``allowed``, else ValueError), consumed."""
        if not self._skip_space():
            return None
        byte = self._buf[self._pos]
        if byte not in allowed:
            raise ValueError(f"unexpected {chr(byte)!r} in the answer")
        self._pos += 1
        return byte

    def _begin(self, state: str) -> None:
        self._state = state
        self._start = self._pos
        self._discarded = 0
        self._dropping = False
        self._depth = 0
        self._in_string = False
        self._scalar = False

    def _advance(self) -> None:
        while self._state != "done":
            state = self._state
            if state == "start":
                if self._expect(b"{") is None:
                    return
                self._state = "first_key"
            elif state in ("first_key", "next_key"):
                allowed = b'"}' if state == "first_key" else b'"'
                if not self._skip_space():
                    return
                if self._buf[self._pos] == ord("}") and state == "first_key":
                    self._pos += 1
                    self._state = "done"
                    continue
                self._begin("key")
                if self._expect(allowed) is None:
                    return
                self._in_string = True
            elif state == "key":
                done = self._scan()
                if self._pos - self._start > MAX_KEY_BYTES:
                    raise ValueError("a key of the answer is too long")
                if not done:
                    return
                self._key = str(json.loads(self._buf[self._start : self._pos]))
                self._state = "colon"
            elif state == "colon":
                if self._expect(b":") is None:
                    return
                self._state = "value_start"
            elif state == "value_start":
                if not self._skip_space():
                    return
                self._begin("value")
                first = bytes(self._buf[self._pos : self._pos + 1])
                if first == b'"':
                    self._pos += 1
                    self._in_string = True
                elif first in (b"[", b"{"):
                    self._pos += 1
                    self._depth = 1
                else:
                    self._scalar = True
            elif state == "value":
                done = self._scan()
                size = self._discarded + self._pos - self._start
                if not self._dropping and size > self.limits.get(self._key, self.default_limit):
                    self._dropping = True
                if not done:
                    return
                assert self.values is not None
                if self._dropping:
                    self.oversized[self._key] = size
                else:
                    value = json.loads(self._buf[self._start : self._pos])
                    most = self.text_limits.get(self._key)
                    if isinstance(value, str) and most is not None and len(value) > most:
                        self.oversized[self._key] = len(value)
                    else:
                        self.values[self._key] = value
                self._state = "after_value"
            elif state == "after_value":
                byte = self._expect(b",}")
                if byte is None:
                    return
                self._state = "next_key" if byte == ord(",") else "done"

    def _scan(self) -> bool:
        """Move over the token from ``_pos``; True once it is whole (``_pos`` past its end)."""
        buf = self._buf
        if self._scalar:
            match = _SCALAR_STOP.search(buf, self._pos)
            if match is None:
                self._pos = len(buf)
                return False
            self._pos = match.start()
            return True
        while True:
            if self._in_string:
                # Two finds (memchr) rather than a regular expression: logs and outputs are
                # long strings, and this is where reading them spends its time.
                slash = buf.find(b"\\", self._pos)
                quote = buf.find(b'"', self._pos, len(buf) if slash < 0 else slash)
                if quote < 0:
                    if slash < 0:
                        self._pos = len(buf)
                        return False
                    if slash + 1 >= len(buf):  # the escaped byte is still to come
                        self._pos = slash
                        return False
                    self._pos = slash + 2
                    continue
                self._pos = quote + 1
                self._in_string = False
                if self._depth == 0:
                    return True
                continue
            match = _CONTAINER_STOP.search(buf, self._pos)
            if match is None:
                self._pos = len(buf)
                return False
            self._pos = match.end()
            byte = match.group()
            if byte == b'"':
                self._in_string = True
            elif byte in (b"[", b"{"):
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    return True


def answer_reader(spec: RunnerSpec) -> AnswerReader:
    """A reader of coglet's answers (and webhook deliveries) with ``spec``'s limits."""
    # Logs of up to max_logs characters pass whatever their JSON escapes add (a newline is
    # two bytes there): their JSON may take twice that before it counts as over.
    return AnswerReader(
        {"logs": 2 * spec.max_logs + 2}, spec.max_output, text_limits={"logs": spec.max_logs}
    )


async def read_answer(chunks: AsyncIterable[bytes], reader: AnswerReader) -> AnswerReader:
    """Read a whole body into ``reader``, piece by piece."""
    async for chunk in chunks:
        reader.feed(chunk)
    reader.finish()
    return reader


def answered_prediction(status: int, reader: AnswerReader) -> CogPrediction:
    """The terminal prediction out of coglet's answer (see ``coglet.parse_answer``)."""
    if status == 200 and reader.values is not None:
        return parse_prediction(reader.values)
    return parse_answer(status, bytes(reader.head))
