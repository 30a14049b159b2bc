"""A bounded ring of text lines, each tagged with a sequence number and a key,
held compressed: what the drop log keeps in memory.

The drop log's lines are JSON objects that repeat their keys, network and
endpoint ids and reasons; 10,000 of them took ~7 MiB as Python strings. Here
the newest ``block`` lines stay as they are, older ones are zlib-compressed
``block`` lines at a time (about a tenth of the size). Reading a row older
than the newest block decompresses its block; a cursor that follows the log
(rows after the last one it saw) reads only the newest blocks.
"""
from __future__ import annotations

import collections
import sys
import zlib
from array import array
from typing import Iterator, NamedTuple


class _Block(NamedTuple):
    seqs: array          # each row's sequence number, ascending
    keys: tuple          # each row's key (interned strings: one object per network)
    lens: array          # each row's line length, characters
    data: bytes          # zlib of the rows' lines joined by "\n"


class LineRing:
    """Rows ``(seq, key, line)`` appended in ascending ``seq``; at most ``maxlen``
    (the oldest go first). ``line`` holds no newline. Not thread-safe (the drop log locks)."""

    def __init__(self, maxlen: int, block: int = 64):
        self.maxlen, self.block = maxlen, block
        self._blocks: collections.deque = collections.deque()
        self._skip = 0         # rows of the oldest block already dropped
        self._hot: list = []   # the newest rows, uncompressed
        self._count = 0
        self.size = 0          # characters of the lines held

    def __len__(self) -> int:
        return self._count

    def append(self, seq: int, key: str, line: str) -> None:
        self._hot.append((seq, sys.intern(key), line))
        self._count += 1
        self.size += len(line)
        if len(self._hot) >= self.block:
            self._freeze()
        while self._count > self.maxlen:
            self._drop_oldest()

    def _freeze(self) -> None:
        seqs, keys, lines = zip(*self._hot)
        self._blocks.append(_Block(array("q", seqs), keys, array("I", map(len, lines)),
                                   zlib.compress("\n".join(lines).encode("utf-8", "surrogatepass"), 6)))
        self._hot = []

    def _drop_oldest(self) -> None:
        if not self._blocks:
            _seq, _key, line = self._hot.pop(0)
            self.size -= len(line)
        else:
            oldest = self._blocks[0]
            self.size -= oldest.lens[self._skip]
            self._skip += 1
            if self._skip == len(oldest.seqs):
                self._blocks.popleft()
                self._skip = 0
        self._count -= 1

    @staticmethod
    def _lines(block: _Block) -> list:
        return zlib.decompress(block.data).decode("utf-8", "surrogatepass").split("\n")

    def rows(self, since: int = 0) -> Iterator[tuple]:
        """The rows with ``seq > since``, oldest first."""
        for i, block in enumerate(list(self._blocks)):
            if block.seqs[-1] <= since:
                continue
            start = self._skip if i == 0 else 0
            for seq, key, line in zip(block.seqs[start:], block.keys[start:], self._lines(block)[start:]):
                if seq > since:
                    yield seq, key, line
        yield from (row for row in list(self._hot) if row[0] > since)

    def __iter__(self) -> Iterator[tuple]:
        return self.rows()

    def last(self):
        """The newest row, or None."""
        if self._hot:
            return self._hot[-1]
        if self._blocks:
            block = self._blocks[-1]
            return block.seqs[-1], block.keys[-1], self._lines(block)[-1]
        return None
