"""Storage of the voxel map: growable column arrays and a sorted key index.

Rows are voxels. Attributes live in :class:`ColumnStore` arrays whose rows never move on
insertion (new voxels are appended; the arrays grow geometrically), so a frame's update is a
gather/scatter on its own rows only and never copies the large columns (a 300 k x 384
float16 embedding column is 230 MB). Rows move only when voxels are evicted: the surviving
rows at the end fill the holes, so rows ``0..n-1`` stay dense.

:class:`SortedKeyIndex` maps voxel keys to rows with a sorted ``int64`` key array and
``searchsorted``; inserting a frame's new keys is one merge of the two small index arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ColumnStore", "SortedKeyIndex"]

#: growth factor of the column capacity
GROWTH = 1.5


@dataclass
class _Column:
    data: np.ndarray  # (capacity, *tail)
    fill: object  # value of new rows


class ColumnStore:
    """Named column arrays sharing one row count ``n`` and capacity.

    Args:
        capacity: initial rows allocated.
    """

    def __init__(self, capacity: int = 1024):
        self._cols: dict[str, _Column] = {}
        self._n = 0
        self._cap = max(1, int(capacity))

    @property
    def n(self) -> int:
        """Rows in use."""
        return self._n

    @property
    def capacity(self) -> int:
        """Rows allocated."""
        return self._cap

    def touch_reserved(self) -> int:
        """Write every reserved row past ``n`` once (with the column's fill), so that the
        kernel maps their pages now rather than when rows are appended; returns the bytes
        touched."""
        touched = 0
        for col in self._cols.values():
            tail = col.data[self._n:]
            tail[...] = col.fill
            touched += tail.nbytes
        return touched

    def add_column(self, name: str, tail: tuple = (), dtype=np.float32, fill=0) -> np.ndarray:
        """Create column ``name`` of shape ``(capacity, *tail)``; existing rows get ``fill``.

        Raises:
            KeyError: the column exists.
        """
        if name in self._cols:
            raise KeyError(f"column {name!r} exists")
        data = np.empty((self._cap,) + tuple(tail), dtype=dtype)
        data[: self._n] = fill
        self._cols[name] = _Column(data, fill)
        return data[: self._n]

    def drop_column(self, name: str) -> None:
        """Remove column ``name`` (no error when absent)."""
        self._cols.pop(name, None)

    def has(self, name: str) -> bool:
        return name in self._cols

    def __getitem__(self, name: str) -> np.ndarray:
        """The live rows ``[0, n)`` of column ``name`` (a view)."""
        return self._cols[name].data[: self._n]

    def raw(self, name: str) -> np.ndarray:
        """The whole allocated array of column ``name`` (rows beyond ``n`` are garbage)."""
        return self._cols[name].data

    def append(self, k: int) -> slice:
        """Add ``k`` rows (filled with each column's fill value); returns their slice."""
        start, stop = self._n, self._n + int(k)
        if stop > self._cap:
            self._reserve(max(stop, int(self._cap * GROWTH)))
        for col in self._cols.values():
            col.data[start:stop] = col.fill
        self._n = stop
        return slice(start, stop)

    def _reserve(self, cap: int) -> None:
        for col in self._cols.values():
            data = np.empty((cap,) + col.data.shape[1:], dtype=col.data.dtype)
            data[: self._n] = col.data[: self._n]
            col.data = data
        self._cap = cap

    def remove(self, rows: np.ndarray) -> np.ndarray:
        """Delete ``rows`` (distinct), moving surviving rows from the end into the holes.

        Returns:
            ``(n_old,) int64`` new row of every old row, -1 for the removed ones.
        """
        n, k = self._n, int(rows.shape[0])
        remap = np.arange(n, dtype=np.int64)
        remap[rows] = -1
        keep = n - k
        holes = rows[rows < keep]  # removed rows inside the kept range
        tail = np.arange(keep, n, dtype=np.int64)
        movers = tail[remap[keep:] >= 0]  # surviving rows beyond the kept range
        holes = np.sort(holes)
        for col in self._cols.values():
            col.data[holes] = np.take(col.data, movers, axis=0)
        remap[movers] = holes
        self._n = keep
        return remap

    def clear(self) -> None:
        """Drop every row (columns and capacity stay)."""
        self._n = 0

    def nbytes(self) -> int:
        """Bytes allocated by all columns (capacity, not just the live rows)."""
        return int(sum(c.data.nbytes for c in self._cols.values()))


class SortedKeyIndex:
    """Voxel key -> row, with sorted key array and ``searchsorted`` lookups."""

    def __init__(self):
        self.keys = np.zeros(0, dtype=np.int64)
        self.rows = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """``(M,) int64`` row of each key of ``keys (M,)``, -1 where absent."""
        n = self.keys.shape[0]
        if n == 0:
            return np.full(keys.shape[0], -1, dtype=np.int64)
        pos = np.searchsorted(self.keys, keys)
        np.minimum(pos, n - 1, out=pos)
        found = self.keys[pos] == keys
        out = np.take(self.rows, pos)
        out[~found] = -1
        return out

    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Add absent ``keys (K,)`` (sorted ascending, distinct) mapped to ``rows (K,)``."""
        k = keys.shape[0]
        if k == 0:
            return
        n = self.keys.shape[0]
        at = np.searchsorted(self.keys, keys) + np.arange(k)  # final positions of the new keys
        is_old = np.ones(n + k, dtype=bool)
        is_old[at] = False
        new_keys = np.empty(n + k, dtype=np.int64)
        new_rows = np.empty(n + k, dtype=np.int64)
        new_keys[at], new_rows[at] = keys, rows
        new_keys[is_old], new_rows[is_old] = self.keys, self.rows
        self.keys, self.rows = new_keys, new_rows

    def remap(self, remap: np.ndarray) -> None:
        """Apply a row renumbering from :meth:`ColumnStore.remove` (drops rows mapped to -1)."""
        new_rows = np.take(remap, self.rows)
        keep = new_rows >= 0
        self.keys, self.rows = self.keys[keep], new_rows[keep]

    def clear(self) -> None:
        self.keys = np.zeros(0, dtype=np.int64)
        self.rows = np.zeros(0, dtype=np.int64)

    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.rows.nbytes)
