"""A minimal compressed-sparse-row matrix in NumPy (no SciPy needed in the training image).

``CSR(indptr, indices, values, shape)`` holds row ``i``'s entries in
``indices[indptr[i]:indptr[i+1]]`` / ``values[...]``, column indices sorted ascending and unique
within a row. ``indptr`` is int64, ``indices`` int32 (dense IDs fit: the constructor checks the
shape), ``values`` float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.errors import TrainerInputError

_MAX_DIM = np.iinfo(np.int32).max


@dataclass(frozen=True)
class CSR:
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        nrows, ncols = (int(s) for s in self.shape)
        object.__setattr__(self, "shape", (nrows, ncols))
        if nrows < 0 or ncols < 0 or nrows > _MAX_DIM or ncols > _MAX_DIM:
            raise TrainerInputError(f"matrix shape {self.shape} out of range")
        object.__setattr__(self, "indptr", np.ascontiguousarray(self.indptr, dtype=np.int64))
        object.__setattr__(self, "indices", np.ascontiguousarray(self.indices, dtype=np.int32))
        object.__setattr__(self, "values", np.ascontiguousarray(self.values, dtype=np.float32))
        if self.indptr.shape != (nrows + 1,) or self.indptr[0] != 0:
            raise TrainerInputError("indptr must have nrows+1 entries starting at 0")
        if np.any(np.diff(self.indptr) < 0):
            raise TrainerInputError("indptr must be non-decreasing")
        nnz = int(self.indptr[-1])
        if self.indices.shape != (nnz,) or self.values.shape != (nnz,):
            raise TrainerInputError("indices/values length must equal indptr[-1]")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_coo(
        cls,
        rows: np.ndarray,
        cols: np.ndarray,
        values: np.ndarray,
        shape: tuple[int, int],
        what: str = "matrix",
    ) -> "CSR":
        """Builds a CSR from coordinates, validating ranges, finiteness and uniqueness."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        values = np.asarray(values)
        if not (rows.shape == cols.shape == values.shape) or rows.ndim != 1:
            raise TrainerInputError(f"{what}: rows, cols and values must be 1-D of equal length")
        nrows, ncols = shape
        _check_range(rows, nrows, f"{what}: row id")
        _check_range(cols, ncols, f"{what}: column id")
        _check_finite(values, what)
        order = np.lexsort((cols, rows))
        rows, cols, values = rows[order], cols[order], values[order]
        if rows.size > 1:
            dup = (rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1])
            if np.any(dup):
                k = int(np.flatnonzero(dup)[0])
                raise TrainerInputError(
                    f"{what}: duplicate entry ({rows[k]}, {cols[k]}); the pipeline must "
                    "aggregate repeated interactions into one rating"
                )
        indptr = np.zeros(nrows + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=nrows), out=indptr[1:])
        return cls(indptr, cols, values.astype(np.float32), (nrows, ncols))

    @classmethod
    def from_compressed_rows(cls, matrix: object, what: str = "matrix") -> "CSR":
        """A CSR from anything stored by compressed rows: ``indptr``, ``indices``, ``data``
        and ``shape`` attributes, such as ``scipy.sparse.csr_matrix`` / ``csr_array``
        (read by attribute: SciPy is never imported). A :class:`CSR` is returned as it is.

        As SciPy defines the matrix, repeated ``(row, column)`` entries are summed; stored
        zeros (after summing) are no interaction and are left out, as :meth:`from_dense` does.
        A matrix in another layout (``format`` other than ``"csr"``, e.g. CSC, whose
        ``indptr`` runs over columns) is refused: convert it with ``.tocsr()``.
        """
        if isinstance(matrix, CSR):
            return matrix
        missing = [a for a in ("indptr", "indices", "data", "shape") if not hasattr(matrix, a)]
        if missing:
            raise TrainerInputError(
                f"{what} must be a CSR matrix (indptr, indices, data, shape), e.g. "
                f"scipy.sparse.csr_matrix; {type(matrix).__name__} has no {', '.join(missing)}"
            )
        layout = getattr(matrix, "format", "csr")
        if layout != "csr":
            raise TrainerInputError(f"{what} is stored as {layout!r}, not by rows: pass .tocsr()")
        nrows, ncols = (int(s) for s in matrix.shape)
        indptr = np.asarray(matrix.indptr, dtype=np.int64)
        if indptr.shape != (nrows + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            raise TrainerInputError(f"{what}: indptr must be non-decreasing from 0 with nrows+1 entries")
        rows = np.repeat(np.arange(nrows, dtype=np.int64), np.diff(indptr))
        cols = np.asarray(matrix.indices, dtype=np.int64)
        values = np.asarray(matrix.data, dtype=np.float64)
        if cols.shape != rows.shape or values.shape != rows.shape:
            raise TrainerInputError(f"{what}: indices/data length must equal indptr[-1]")
        _check_range(cols, ncols, f"{what}: column id")
        _check_finite(values, what)
        order = np.lexsort((cols, rows))
        rows, cols, values = rows[order], cols[order], values[order]
        if rows.size:
            first = np.ones(rows.size, dtype=bool)
            first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
            starts = np.flatnonzero(first)
            rows, cols, values = rows[starts], cols[starts], np.add.reduceat(values, starts)
        keep = values != 0
        return cls.from_coo(rows[keep], cols[keep], values[keep], (nrows, ncols), what)

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> "CSR":
        """Non-zero entries of a dense 2-D array (tests, small examples)."""
        dense = np.asarray(dense)
        if dense.ndim != 2:
            raise TrainerInputError("from_dense needs a 2-D array")
        r, c = np.nonzero(dense)
        return cls.from_coo(r, c, dense[r, c], dense.shape)

    # ------------------------------------------------------------------ views
    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def row_lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def row_ids(self) -> np.ndarray:
        """The row of every stored entry (COO row coordinates), int64."""
        return np.repeat(np.arange(self.shape[0], dtype=np.int64), self.row_lengths())

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.indptr[i], self.indptr[i + 1]
        return self.indices[s:e], self.values[s:e]

    def transpose(self) -> "CSR":
        return CSR.from_coo(
            self.indices, self.row_ids(), self.values, (self.shape[1], self.shape[0])
        )

    def transpose_permutation(self) -> np.ndarray:
        """``perm`` such that ``self.values[perm]`` is the value array of ``self.transpose()``."""
        return np.lexsort((self.row_ids(), self.indices))

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=np.float64)
        out[self.row_ids(), self.indices] = self.values
        return out

    def slice_rows(self, start: int, stop: int) -> "CSR":
        s, e = self.indptr[start], self.indptr[stop]
        return CSR(
            self.indptr[start : stop + 1] - s,
            self.indices[s:e],
            self.values[s:e],
            (stop - start, self.shape[1]),
        )

    def take_rows(self, rows: np.ndarray) -> "CSR":
        """The rows ``rows`` (any order, repeats allowed) as a new ``len(rows) × ncols`` CSR."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        lens = self.row_lengths()[rows]
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        # position of every output entry in the source arrays
        src = np.repeat(self.indptr[rows] - indptr[:-1], lens) + np.arange(indptr[-1])
        return CSR(indptr, self.indices[src], self.values[src], (rows.size, self.shape[1]))

    def same_entries_as_transpose_of(self, other: "CSR") -> bool:
        """True when ``self`` holds exactly the entries of ``other``ᵀ (same coordinates and
        bit-identical values)."""
        if self.shape != (other.shape[1], other.shape[0]) or self.nnz != other.nnz:
            return False
        t = other.transpose()
        return (
            np.array_equal(self.indptr, t.indptr)
            and np.array_equal(self.indices, t.indices)
            and np.array_equal(self.values.view(np.int32), t.values.view(np.int32))
        )


def _check_range(ids: np.ndarray, n: int, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        bad = ids[(ids < 0) | (ids >= n)][0]
        raise TrainerInputError(f"{what} {int(bad)} out of range [0, {n})")


def _check_finite(values: np.ndarray, what: str) -> None:
    if not np.issubdtype(values.dtype, np.number):
        raise TrainerInputError(f"{what}: ratings must be numeric, got {values.dtype}")
    finite = np.isfinite(values)
    if not np.all(finite):
        k = int(np.flatnonzero(~finite)[0])
        raise TrainerInputError(f"{what}: rating #{k} is {values[k]} (NaN/inf ratings refused)")
