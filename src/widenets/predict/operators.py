"""Kernel matrices given by row blocks, for solvers that must not hold K whole.

A :class:`KernelOperator` is an (M, N) kernel matrix K known through ``rows(start, stop)``
= K[start:stop, :]. Products K V are summed over row blocks of ``block_rows`` rows, so a
product holds one block (block_rows x N) and V, never K: peak memory O(N * block + N * R).
A square operator is symmetric positive semi-definite (a train-train kernel) and also gives
``diagonal()`` and ``columns(idx)`` = K[:, idx], which is all a pivoted-Cholesky
preconditioner reads.

- :class:`DenseKernel`: a matrix already in memory (tensor, numpy array or memmap) or any
  array that slices by rows (zarr, h5py), read block by block;
- :class:`NetworkKernel`: tiles ``net.kernel(x1[rows], x2, get=...)`` computed on the fly
  and dropped after use;
- :class:`RowFunctionKernel`: tiles from any function ``rows_fn(start, stop)``.

Every block is used in float64, whatever the stored dtype.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from widenets._pool import default_workers, one_intra_op_thread, others_running, run_tasks
from widenets.errors import check_positive_int
from widenets.predict import _skinny
from widenets.predict._validation import check_finite

#: bytes of one float64 row block that ``NetworkKernel`` and ``RowFunctionKernel`` aim at
#: when no ``block_rows`` is given (the tile itself; the kernel's own intermediates are
#: bounded separately by ``net.kernel``'s tiling)
DEFAULT_BLOCK_BYTES = 64 * 2**20


@contextmanager
def compute_threads():
    """Threads for products with K: yields 1 on a quiet machine (torch's own threads split
    each operation). When other processes are running, torch's threads would wait for each
    other at the end of every small vector operation of CG (``widenets._pool``): then torch
    gets one intra-op thread within the block (restored after it) and the products run
    their row blocks on as many threads as torch had."""
    workers = default_workers()
    if workers > 1 and (others_running() or 0) > 0:
        with one_intra_op_thread():
            yield workers
    else:
        yield 1


def _rows_for_budget(n_cols: int, block_bytes: int) -> int:
    return max(1, block_bytes // (8 * max(n_cols, 1)))


class KernelOperator:
    """An (M, N) kernel matrix read by row blocks. Subclasses define ``rows``; square,
    symmetric ones also ``diagonal`` and, if they can do better than ``rows``, ``columns``.

    Attributes:
        shape: (M, N).
        dtype: dtype of the stored or computed entries (products are float64).
        device: where the blocks live.
        block_rows: rows per block in ``matmul``.
    """

    shape: tuple[int, int]
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")
    block_rows: int = 1024
    columns_from: KernelOperator | None = None

    @property
    def n(self) -> int:
        """Number of columns N (the training set of a train or test-train kernel)."""
        return self.shape[1]

    @property
    def is_square(self) -> bool:
        return self.shape[0] == self.shape[1]

    def rows(self, start: int, stop: int) -> Tensor:
        """K[start:stop, :] as a (stop - start, N) tensor."""
        raise NotImplementedError

    def matmul(self, v: Tensor, *, workers: int = 1) -> Tensor:
        """K @ v for v of shape (N, R) (or (N,)), in float64, one row block at a time;
        ``workers`` > 1 runs blocks on that many threads (each with one torch thread: the
        solvers ask for it when other processes share the cores)."""
        squeeze, v2 = self._as_block(v)
        m = self.shape[0]
        out = torch.empty(m, v2.shape[1], dtype=torch.float64, device=self.device)
        inner = None if workers <= 1 else 1  # the skinny loop's threads within a block

        def one(block: tuple[int, int]) -> None:
            rows = self.rows(*block)
            part = out[block[0] : block[1]]
            if _skinny.matmul(rows, v2, inner, out=part) is None:
                part.copy_(rows.to(torch.float64) @ v2)

        blocks = [(s, min(s + self.block_rows, m)) for s in range(0, m, self.block_rows)]
        run_tasks(blocks, one, workers)
        return out[:, 0] if squeeze else out

    def skinny_products(self) -> bool:
        """Products take :mod:`widenets.predict._skinny`'s loop on a matrix in memory (the
        solvers then run CG with one torch thread, :func:`~widenets.predict._skinny.torch_serial`).
        """
        return False

    def _as_block(self, v: Tensor) -> tuple[bool, Tensor]:
        squeeze = v.ndim == 1
        v = v.to(self.device, torch.float64)
        v2 = v[:, None] if squeeze else v
        if v2.ndim != 2 or v2.shape[0] != self.n:
            raise ValueError(
                f"`v` must have shape ({self.n},) or ({self.n}, R) to multiply a kernel of "
                f"shape {self.shape}, got {tuple(v.shape)}."
            )
        return squeeze, v2

    def diagonal(self) -> Tensor:
        """diag(K) as an (N,) float64 tensor (square operators)."""
        self._require_square("diagonal")
        diag = torch.empty(self.n, dtype=torch.float64, device=self.device)
        for start in range(0, self.n, self.block_rows):
            stop = min(start + self.block_rows, self.n)
            diag[start:stop] = self.rows(start, stop)[:, start:stop].diagonal()
        return diag

    def columns(self, idx) -> Tensor:
        """K[:, idx] as an (N, len(idx)) float64 tensor (square operators: by symmetry,
        the rows idx transposed)."""
        self._require_square("columns")
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if self.columns_from is not None:
            return self.columns_from.columns(idx)
        return torch.stack([self.rows(i, i + 1)[0] for i in idx.tolist()], 1).to(torch.float64)

    def _require_square(self, what: str) -> None:
        if not self.is_square:
            raise ValueError(
                f"`{what}` needs a square (train-train) kernel operator, this one has shape "
                f"{self.shape}."
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, block_rows={self.block_rows})"


class DenseKernel(KernelOperator):
    """A kernel matrix held in memory or in any array that slices by rows.

    Args:
        k: (M, N) torch tensor, numpy array (memmaps included) or an array-like whose
            ``k[start:stop]`` is a numpy array or tensor (zarr, h5py, dask with compute).
        block_rows: rows per block in ``matmul`` (a tensor in memory is multiplied whole).
        columns_from: an operator of the same kernel that answers ``columns`` (e.g. a
            ``NetworkKernel``: r columns of a row-tiled store touch nearly every tile,
            recomputing them costs N * r entries).
    """

    def __init__(self, k, *, block_rows: int | None = None, columns_from=None):
        shape = getattr(k, "shape", None)
        if shape is None or len(shape) != 2:
            raise ValueError(
                f"`k` must be a 2-D kernel matrix (tensor or array), got "
                f"{type(k).__name__}{'' if shape is None else ' of shape ' + str(tuple(shape))}."
            )
        if isinstance(k, np.ndarray) and not isinstance(k, np.memmap):
            k = torch.from_numpy(k)
        self.k = k
        self.shape = (int(shape[0]), int(shape[1]))
        if min(self.shape) == 0:
            raise ValueError(f"`k` is empty, shape {self.shape}.")
        if isinstance(k, Tensor):
            if not k.is_floating_point():
                raise ValueError(f"`k` must be a floating-point kernel, got dtype {k.dtype}.")
            self.dtype, self.device = k.dtype, k.device
        else:
            self.dtype = torch.float64
        budget = _rows_for_budget(self.shape[1], DEFAULT_BLOCK_BYTES)
        self.block_rows = (
            budget if block_rows is None else check_positive_int(block_rows, "block_rows")
        )
        self.columns_from = _check_columns_from(columns_from, self.shape)

    def rows(self, start: int, stop: int) -> Tensor:
        block = self.k[start:stop]
        return block if isinstance(block, Tensor) else torch.from_numpy(np.array(block))

    def skinny_products(self) -> bool:
        return _skinny.fits(self.k)

    def matmul(self, v: Tensor, *, workers: int = 1) -> Tensor:
        if _skinny.fits(self.k):
            squeeze, v2 = self._as_block(v)
            out = _skinny.matmul(self.k, v2, None if workers <= 1 else workers)
            if out is not None:
                return out[:, 0] if squeeze else out
        if not (isinstance(self.k, Tensor) and self.k.dtype == torch.float64):
            return super().matmul(v, workers=workers)
        squeeze, v2 = self._as_block(v)
        if workers <= 1:
            out = self.k @ v2
        else:  # slices of a tensor in memory cost nothing: a few per thread
            m = self.shape[0]
            step = -(-m // (4 * workers))
            out = torch.empty(m, v2.shape[1], dtype=torch.float64, device=self.device)

            def one(s: int) -> None:
                out[s : s + step] = self.k[s : s + step] @ v2

            run_tasks(list(range(0, m, step)), one, workers)
        return out[:, 0] if squeeze else out

    def diagonal(self) -> Tensor:
        self._require_square("diagonal")
        if isinstance(self.k, Tensor):
            return self.k.diagonal().to(torch.float64)
        # the diagonal (b x b) blocks only: an array on disk is not read whole for it
        diag = torch.empty(self.n, dtype=torch.float64, device=self.device)
        for start in range(0, self.n, self.block_rows):
            stop = min(start + self.block_rows, self.n)
            block = np.asarray(self.k[start:stop, start:stop])
            diag[start:stop] = torch.from_numpy(block.diagonal().astype(np.float64))
        return diag

    def columns(self, idx) -> Tensor:
        self._require_square("columns")
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if self.columns_from is not None:
            return self.columns_from.columns(idx)
        if isinstance(self.k, Tensor):
            return self.k[idx.to(self.device)].T.to(torch.float64)
        if isinstance(self.k, np.ndarray):
            return torch.from_numpy(np.array(self.k[idx.numpy()])).T.to(torch.float64)
        return super().columns(idx)


class RowFunctionKernel(KernelOperator):
    """A kernel matrix given by a function of row ranges, e.g. tiles read from a store.

    Args:
        rows_fn: ``rows_fn(start, stop)`` -> K[start:stop, :] as an array of shape
            (stop - start, N).
        shape: (M, N).
        diagonal_fn: optional ``diagonal_fn()`` -> diag(K), if cheaper than reading blocks.
        block_rows: rows per call of ``rows_fn`` (default: about 64 MiB of float64).
        columns_from: an operator of the same kernel that answers ``columns`` (see
            :class:`DenseKernel`).
    """

    def __init__(
        self, rows_fn, shape, *, diagonal_fn=None, block_rows: int | None = None, columns_from=None
    ):
        if not callable(rows_fn):
            raise TypeError(f"`rows_fn` must be callable (start, stop) -> rows, got {rows_fn!r}.")
        try:
            m, n = (int(s) for s in shape)
        except (TypeError, ValueError):
            raise ValueError(f"`shape` must be a pair (M, N) of ints, got {shape!r}.") from None
        if m < 1 or n < 1:
            raise ValueError(f"`shape` must be positive, got {shape!r}.")
        self.rows_fn, self.diagonal_fn, self.shape = rows_fn, diagonal_fn, (m, n)
        budget = _rows_for_budget(n, DEFAULT_BLOCK_BYTES)
        self.block_rows = (
            budget if block_rows is None else check_positive_int(block_rows, "block_rows")
        )
        self.columns_from = _check_columns_from(columns_from, self.shape)

    def rows(self, start: int, stop: int) -> Tensor:
        block = self.rows_fn(start, stop)
        block = block if isinstance(block, Tensor) else torch.as_tensor(np.asarray(block))
        if tuple(block.shape) != (stop - start, self.n):
            raise ValueError(
                f"`rows_fn({start}, {stop})` must return shape {(stop - start, self.n)}, got "
                f"{tuple(block.shape)}."
            )
        return block

    def diagonal(self) -> Tensor:
        if self.diagonal_fn is None:
            return super().diagonal()
        self._require_square("diagonal")
        return torch.as_tensor(np.asarray(self.diagonal_fn()), dtype=torch.float64).reshape(-1)


class NetworkKernel(KernelOperator):
    """The NNGP or NTK of a widenets network, computed tile by tile and never stored.

    ``rows(s, e)`` is ``net.kernel(x1[s:e], x2, get=get).<get>``; with ``x2=None`` (a train
    kernel, square) the entries of an input with itself are replaced by the self-kernel's
    diagonal, so every entry equals that of ``net.kernel(x1)`` (the exact diagonal, and
    layers such as Dropout that treat an input with itself apart).

    Args:
        net: a widenets layer (``net.kernel``).
        x1: (M, ...) inputs (the rows).
        x2: (N, ...) inputs (the columns), or None for x1 itself.
        get: "nngp" or "ntk".
        dtype: dtype of the kernel computation (float64 by default).
        block_rows: rows per tile (default: about 64 MiB of float64 per tile).
    """

    def __init__(
        self,
        net,
        x1,
        x2=None,
        *,
        get: str = "nngp",
        dtype: torch.dtype = torch.float64,
        block_rows: int | None = None,
    ):
        if not hasattr(net, "kernel"):
            raise TypeError(f"`net` must be a widenets network (with .kernel), got {net!r}.")
        if get not in ("nngp", "ntk"):
            raise ValueError(f'`get` must be "nngp" or "ntk", got {get!r}.')
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"`dtype` must be a floating torch dtype, got {dtype!r}.")
        self.net, self.get, self.dtype = net, get, dtype
        self.x1 = torch.as_tensor(x1)
        self.x2 = None if x2 is None else torch.as_tensor(x2)
        cols = self.x1 if self.x2 is None else self.x2
        if self.x1.ndim < 2 or cols.ndim < 2 or len(self.x1) == 0 or len(cols) == 0:
            raise ValueError(
                f"`x1` and `x2` must be non-empty (N, ...) inputs, got shapes "
                f"{tuple(self.x1.shape)} and {tuple(cols.shape)}."
            )
        self.shape = (len(self.x1), len(cols))
        self.device = self.x1.device
        budget = _rows_for_budget(self.shape[1], DEFAULT_BLOCK_BYTES)
        self.block_rows = (
            budget if block_rows is None else check_positive_int(block_rows, "block_rows")
        )
        self._diag: Tensor | None = None

    def _kernel(self, xa, xb=None) -> Tensor:
        k = self.net.kernel(xa, xb, get=self.get, dtype=self.dtype, progress=False)
        return getattr(k, self.get)

    def diagonal(self) -> Tensor:
        """diag(K) from self-kernels of blocks of ``diag_rows`` inputs (N * block entries)."""
        self._require_square("diagonal")
        if self._diag is None:
            step = max(1, min(self.block_rows, 256))
            parts = [self._kernel(self.x1[s : s + step]).diagonal() for s in range(0, self.n, step)]
            self._diag = torch.cat(parts).to(torch.float64)
        return self._diag

    def rows(self, start: int, stop: int) -> Tensor:
        if self.x2 is not None:
            return self._kernel(self.x1[start:stop], self.x2)
        if start == 0 and stop == self.n:
            return self._kernel(self.x1)
        block = self._kernel(self.x1[start:stop], self.x1).clone()
        r = torch.arange(stop - start, device=block.device)
        block[r, r + start] = self.diagonal()[start:stop].to(block.dtype)
        return block

    def columns(self, idx) -> Tensor:
        self._require_square("columns")
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if len(idx) == 0:
            return torch.empty(self.n, 0, dtype=torch.float64)
        block = self._kernel(self.x1[idx], self.x1).to(torch.float64)
        r = torch.arange(len(idx), device=block.device)
        block[r, idx] = self.diagonal()[idx]
        return block.T


def as_operator(k, name: str, *, square: bool) -> KernelOperator:
    """A :class:`KernelOperator` from an operator, tensor or array (one-line errors)."""
    if isinstance(k, KernelOperator):
        op = k
    elif isinstance(k, (Tensor, np.ndarray)) or (
        hasattr(k, "shape") and hasattr(k, "__getitem__") and not callable(k)
    ):
        if isinstance(k, (Tensor, np.ndarray)):
            arr = torch.as_tensor(k)
            if arr.ndim != 2:
                raise ValueError(
                    f"`{name}` must be a 2-D kernel matrix, got shape {tuple(arr.shape)}."
                )
            if not arr.is_floating_point():
                arr = arr.to(torch.float64)
            check_finite(arr, name)  # one sum; the N x N mask only if it is not finite
            k = arr
        op = DenseKernel(k)
    elif callable(k):
        raise TypeError(
            f"`{name}` is a function: wrap it as RowFunctionKernel(rows_fn, shape=(M, N)) so "
            "that its shape is known."
        )
    else:
        raise TypeError(
            f"`{name}` must be a KernelOperator, tensor or array, got {type(k).__name__}."
        )
    if square and not op.is_square:
        raise ValueError(f"`{name}` must be square (N, N), got shape {op.shape}.")
    return op


def _check_columns_from(op, shape: tuple[int, int]):
    if op is None:
        return None
    if not isinstance(op, KernelOperator) or op.shape != shape:
        raise ValueError(
            f"`columns_from` must be a KernelOperator of the same shape {shape}, got {op!r}."
        )
    return op
