"""A minimal, read-only flatbuffer reader: enough to read a TFLite model file without
TensorFlow or the flatbuffers package (its ops and shapes for ``device.macs``, its metadata
for ``device.model_info``). Little-endian, as every TFLite file is.
"""
from __future__ import annotations

import struct


class Table:
    """A flatbuffer table: enough of the format to read a TFLite model (little-endian).

    Args:
        buf: the whole file.
        pos: where the table starts.
    """

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_size = struct.unpack_from("<H", buf, self.vtable)[0]

    def _offset(self, slot: int) -> int:
        voff = 4 + 2 * slot
        return struct.unpack_from("<H", self.buf, self.vtable + voff)[0] if voff < self.vtable_size else 0

    def scalar(self, slot: int, fmt: str, default: int = 0) -> int:
        off = self._offset(slot)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + off)[0] if off else default

    def _target(self, slot: int) -> int | None:
        off = self._offset(slot)
        if not off:
            return None
        at = self.pos + off
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def ints(self, slot: int) -> list[int]:
        start = self._target(slot)
        if start is None:
            return []
        n = struct.unpack_from("<I", self.buf, start)[0]
        return list(struct.unpack_from(f"<{n}i", self.buf, start + 4))

    def tables(self, slot: int) -> list["Table"]:
        start = self._target(slot)
        if start is None:
            return []
        n = struct.unpack_from("<I", self.buf, start)[0]
        items = [start + 4 + 4 * i for i in range(n)]
        return [Table(self.buf, at + struct.unpack_from("<I", self.buf, at)[0]) for at in items]

    def string(self, slot: int) -> str | None:
        """A string field (``None`` when absent)."""
        start = self._target(slot)
        if start is None:
            return None
        n = struct.unpack_from("<I", self.buf, start)[0]
        return self.buf[start + 4:start + 4 + n].decode("utf-8", errors="replace")

    def bytes_(self, slot: int) -> bytes | None:
        """A ``[ubyte]`` vector field (``None`` when absent)."""
        start = self._target(slot)
        if start is None:
            return None
        n = struct.unpack_from("<I", self.buf, start)[0]
        return bytes(self.buf[start + 4:start + 4 + n])


def root(buf: bytes, identifier: bytes | None = None) -> Table:
    """The root table of a flatbuffer; ``identifier`` (4 bytes) is checked when given.

    Raises:
        ValueError: too short, or another file identifier.
    """
    if len(buf) < 8 or (identifier is not None and buf[4:8] != identifier):
        raise ValueError(f"not a flatbuffer with identifier {identifier!r}")
    return Table(buf, struct.unpack_from("<I", buf, 0)[0])
