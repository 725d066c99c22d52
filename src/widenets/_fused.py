"""Fused per-entry loops for the hottest kernel maps (numba or ``torch.compile``), eager as
fallback.

Two backends (:data:`BACKEND`): numba (:mod:`widenets._numba`: the ABRelu map below and the
3x3 "same" convolution's window sums with bias and NTK update, one pass each; numba is an
optional dependency) and ``torch.compile`` (the ABRelu map only), described here.

The eager path of an activation's pair map is a dozen torch operations over the tile (acos,
sin, snapping, products), each a separate sweep over memory and a separate OpenMP region.
Here the ReLU-family map (``ABRelu``) and the NTK product after it are compiled by
``torch.compile`` (inductor: one vectorised C++ loop per tile): per entry,
-c = K (-1/sqrt q1)(1/sqrt q2) clipped to [-1, 1], phi = arccos(-c) snapped within
sqrt(128 eps) of 0 or pi, K' = ab K + (sin phi - phi (-c)) sqrt(q1) coef sqrt(q2) and
Theta' = Theta (phi coef + ab): the operations of the eager ``ABRelu._pair_from_roots``.

The switch is :data:`FUSED` (or the environment variable ``WIDENETS_FUSED``, read at import):
``"auto"`` (the default) uses the numba loops within a kernel evaluation of at least
:data:`AUTO_CALL_NUMEL` pair-scalars (``call``: pairs times the network's cost per pair) in a
layout not in :data:`AUTO_NUMBA_SKIP` (measured no faster there; there only the chains, from
:data:`AUTO_CHAIN_CALL_NUMEL`, as for a smaller image kernel in the "diagonal" layout), the
whole evaluation or none of it, so that every tile
takes the same path; a small kernel stays on the eager path and does not even import numba.
torch.compile is used only when asked for: ``True`` (the
loops wherever they apply, from numba, else from torch.compile) or
``WIDENETS_FUSED_BACKEND=compile`` (under "auto" then within evaluations of at least
:data:`AUTO_COMPILE_CALL_NUMEL` and on tiles of at least :data:`AUTO_NUMEL` entries, where its
first call's compilation, seconds, pays off); ``False`` never. The numba loops run serially
on the calling thread without the GIL: an evaluation that takes them runs its tiles on the
pool of ``widenets._pool`` (:func:`wants_pool`), one tile per thread. Compilation happens
on the first call of a process for each dtype and layout and is cached on disk (numba's
cache; inductor's ``TORCHINDUCTOR_CACHE_DIR``), so later processes load it. If it fails
(no C++ compiler, a broken numba) the eager path is used from then on: silently under
``"auto"``, with a warning under ``True``. Tensors that autograd records, tensors off the
CPU and reduced-precision tiles that flag ill-conditioned pairs take the eager path.
"""

from __future__ import annotations

import math
import os
import threading
import types
import warnings
from contextlib import contextmanager

import torch
from torch import Tensor

from widenets import _numba, _workspace

PI = math.pi


def parse_switch(value):
    """ "auto", True or False from the switch's accepted spellings; a ValueError otherwise."""
    if value is True or value is False:
        return value
    v = "auto" if value is None else str(value).strip().lower()
    if v in ("", "auto"):
        return "auto"
    if v in ("1", "true", "on", "yes"):
        return True
    if v in ("0", "false", "off", "no"):
        return False
    raise ValueError(
        f"WIDENETS_FUSED / widenets._fused.FUSED must be auto, on or off; got {value!r}."
    )


#: "auto", True or False: whether compiled loops replace the eager maps (see the module doc)
FUSED = parse_switch(os.environ.get("WIDENETS_FUSED", "auto"))

#: under "auto", the fewest pair-scalars of a kernel evaluation (``compute.evaluate_kernel``:
#: pairs times the network's cost per pair) for the numba loops (their first call in a
#: process loads them from numba's cache: about 0.2 s)
AUTO_CALL_NUMEL = 1 << 21
#: under "auto", the layouts (``compute.kernel_layout``) left to the eager path: measured no
#: faster with the numba loops
AUTO_NUMBA_SKIP = frozenset({"packed"})
#: under "auto", in a layout of ``AUTO_NUMBA_SKIP``, or an image kernel in the "diagonal"
#: layout (a Flatten readout between two sets) below ``AUTO_CALL_NUMEL``: the fewest
#: pair-scalars of an evaluation for the chains alone (``_conv_chain``: one pass over a
#: pair's whole run of layers, faster than the eager path down to 4e4 pair-scalars,
#: docs/fused_numba.md); below it, the first call's import of numba and load of its cache
#: (up to about 0.2 s) would outweigh more than a few calls' gain
AUTO_CHAIN_CALL_NUMEL = 1 << 19
#: under "auto" with ``BACKEND`` "compile": the fewest pair-scalars of an evaluation, and
#: entries of a tile's nngp, for the torch.compile loop (seconds of compilation per process)
AUTO_COMPILE_CALL_NUMEL = 1 << 25
AUTO_NUMEL = 1 << 17

#: which compiler makes the loops: "numba" (``widenets._numba``: the ABRelu map and the
#: 3x3 convolution's window sums), "compile" (``torch.compile``: the ABRelu map) or "auto"
#: (numba when it can be imported, else torch.compile); env ``WIDENETS_FUSED_BACKEND``
BACKEND = os.environ.get("WIDENETS_FUSED_BACKEND", "auto").strip().lower() or "auto"

_lock = threading.Lock()
_compiled: dict = {}  # signature: the compiled map, built on first use
_failed: str | None = None  # why compilation failed (then the eager path is used)
_ready: set = set()  # signatures that compiled: later calls need no lock
_large_calls = 0  # kernel evaluations running now that are large enough for "auto"
_chain_calls = 0  # such evaluations in a layout of AUTO_NUMBA_SKIP: only the chains fold


def takes_loops(numel: int, layout: str | None = None) -> bool:
    """Whether a kernel evaluation of ``numel`` pair-scalars in ``layout`` ("full",
    "packed", "diagonal"; None: any) takes the fused loops under the switch as it is now
    (see the module doc). Under "auto" numba is imported only for a large enough call."""
    switch = parse_switch(FUSED)
    if switch is False or _failed is not None:
        return False
    if switch is True:
        return True
    if BACKEND == "compile":
        return numel >= AUTO_COMPILE_CALL_NUMEL
    if numel < AUTO_CALL_NUMEL or layout in AUTO_NUMBA_SKIP:
        return False
    return backend() == "numba"


def takes_chains(numel: int, layout: str | None, spatial: bool = False) -> bool:
    """Whether, under "auto", a kernel evaluation of ``numel`` pair-scalars that does not take
    the per-layer loops takes the chains alone: in a layout of :data:`AUTO_NUMBA_SKIP`, or
    the "diagonal" layout of ``spatial`` (image) inputs, from :data:`AUTO_CHAIN_CALL_NUMEL`
    (numba the backend, no failure so far)."""
    chain_layout = layout in AUTO_NUMBA_SKIP or (spatial and layout == "diagonal")
    if not chain_layout or numel < AUTO_CHAIN_CALL_NUMEL:
        return False
    if parse_switch(FUSED) != "auto" or _failed is not None or BACKEND == "compile":
        return False
    return backend() == "numba"


def wants_pool(numel: int, layout: str | None = None) -> bool:
    """Whether such an evaluation should run its tiles on the thread pool however quiet the
    machine is: the numba loops run on the calling thread alone, so that the parallelism
    comes from tiles on several threads."""
    return takes_loops(numel, layout) and backend() == "numba"


@contextmanager
def call(numel: int, layout: str | None = None, spatial: bool = False):
    """Around a kernel evaluation of ``numel`` pair-scalars in ``layout`` (of ``spatial``,
    image, inputs or not): under "auto" the fused loops are used within it (any thread's
    tiles) when :func:`takes_loops`, the chains alone when :func:`takes_chains`; the tile
    buffers of ``widenets._workspace`` are reused within it."""
    global _large_calls, _chain_calls
    with _workspace.active():  # tile buffers reused within the evaluation (any size)
        if parse_switch(FUSED) != "auto":
            yield
            return
        if takes_loops(numel, layout):
            with _lock:
                _large_calls += 1
            try:
                yield
            finally:
                with _lock:
                    _large_calls -= 1
            return
        if not takes_chains(numel, layout, spatial):
            yield
            return
        # a layout or size where the per-layer loops gained nothing: the chains
        # (``_conv_chain``, one pass over every layer of a pair) still fold
        with _lock:
            _chain_calls += 1
        try:
            yield
        finally:
            with _lock:
                _chain_calls -= 1


def _abrelu_map(ab: float, coef: float, tol: float, tag: int):
    """K' and Theta Kdot of ABRelu (the eager map's operations, out of place), with the
    constants fixed (compiled into the loop rather than passed as symbolic scalars).

    Each signature gets a code object of its own (named by ``tag``): dynamo keeps its
    compiled variants per code object, up to a small limit beyond which it falls back
    to eager with a warning; layouts, dtypes and activations would share one otherwise."""

    def fn(nngp, ntk, neg_inv1, inv2, scaled1, root2):
        return _abrelu(nngp, ntk, neg_inv1, inv2, scaled1, root2, ab, coef, tol)

    code = fn.__code__.replace(co_name=f"abrelu_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, None, fn.__closure__)


def _abrelu(nngp, ntk, neg_inv1, inv2, scaled1, root2, ab: float, coef: float, tol: float):
    """K' and Theta Kdot of ABRelu (the eager map's operations, out of place)."""
    neg_c = (nngp * neg_inv1 * inv2).clamp(-1.0, 1.0)
    phi = torch.acos(neg_c)
    phi = torch.where(phi < tol, 0.0, phi)
    phi = torch.where(phi > PI - tol, PI, phi)
    out = (torch.sin(phi) - phi * neg_c) * scaled1 * root2
    dot = phi * coef
    if ab != 0.0:
        out = out + ab * nngp
        dot = dot + ab
    return out, None if ntk is None else ntk * dot


def enabled() -> bool:
    """Whether the compiled loops are to be tried now (the switch, and no failure so far)."""
    switch = parse_switch(FUSED)
    return switch is not False and _failed is None


def backend() -> str:
    """ "numba" or "compile": the compiler the loops come from now (see :data:`BACKEND`)."""
    if BACKEND not in ("auto", "numba", "compile"):
        raise ValueError(
            "WIDENETS_FUSED_BACKEND / widenets._fused.BACKEND must be auto, numba or "
            f"compile; got {BACKEND!r}."
        )
    if BACKEND == "auto":
        return "numba" if _numba.loops() is not None else "compile"
    if BACKEND == "numba" and _numba.loops() is None and _failed is None:
        _fail(RuntimeError(f"numba is not available ({_numba.failure()})"))
    return BACKEND


def window_sum(t: Tensor, full: bool, scale: float, bvar: float, add: Tensor | None = None):
    """scale * (the 3x3 "same" window sum of the tile t) + bvar (+ add) by the numba loop
    (``widenets._numba.window_sum``), or None when the fused loops are off, the backend is
    not numba or the loop does not apply (the caller then takes the eager path)."""
    if not usable(t, add) or backend() != "numba":
        return None
    try:
        return _numba.window_sum(t, full, scale, bvar, add)
    except Exception as e:  # noqa: BLE001 - as in abrelu_pair
        _fail(e)
        return None


def usable(nngp: Tensor, *tensors: Tensor | None, chain: bool = False) -> bool:
    """Whether a tile's nngp and the other tensors of its map may take the fused path: the
    switch on (under "auto" within a call that takes the loops, :func:`call`, or for a
    ``chain`` also one in a layout of :data:`AUTO_NUMBA_SKIP`; for torch.compile also a
    large enough tile), CPU float32/float64, not recorded by autograd."""
    if not enabled():
        return False
    large = _large_calls > 0 or (chain and _chain_calls > 0)
    if FUSED == "auto" and (not large or (BACKEND == "compile" and nngp.numel() < AUTO_NUMEL)):
        return False
    tensors = (nngp, *tensors)
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype not in (torch.float64, torch.float32):
            return False
        if grad and t.requires_grad:
            return False
    return True


def _fail(e: BaseException) -> None:
    global _failed
    _failed = f"{type(e).__name__}: {e}".splitlines()[0]
    if parse_switch(FUSED) is True:
        warnings.warn(
            f"widenets: the fused kernel loops could not be compiled ({_failed}); "
            "using the eager path.",
            RuntimeWarning,
            stacklevel=3,
        )


def abrelu_pair(
    a: float,
    b: float,
    nngp: Tensor,
    ntk: Tensor | None,
    neg_inv1: Tensor,
    inv2: Tensor,
    scaled1: Tensor,
    root2: Tensor,
) -> tuple[Tensor, Tensor | None] | None:
    """(K', Theta Kdot) of ABRelu(a, b) by the compiled loop, or None when it is not
    available (the caller then takes the eager path)."""
    consts = (a * b, (b - a) ** 2 / (2 * PI), math.sqrt(2 * 64 * torch.finfo(nngp.dtype).eps))
    args = (nngp, ntk, neg_inv1, inv2, scaled1, root2)
    # dynamo specialises on size-1 axes (the broadcast pattern of the layout), dtype, ranks
    key = (
        consts,
        nngp.dtype,
        ntk is None,
        a * b != 0.0,
        *(tuple(n == 1 for n in t.shape) for t in (nngp, neg_inv1, inv2, scaled1, root2)),
    )
    if backend() == "numba":
        try:
            return _numba.abrelu_pair(consts[0], consts[1], consts[2], *args)
        except Exception as e:  # noqa: BLE001 - a typing or LLVM error, no cache...: eager
            _fail(e)
            return None
    try:
        if key in _ready:
            return _compiled[key](*args)
        with _lock:  # the first call of a signature compiles: one thread at a time
            if _failed is not None:
                return None
            if key not in _compiled:
                fn = _abrelu_map(*consts, len(_compiled))
                _compiled[key] = torch.compile(fn, dynamic=True)
            out = _compiled[key](*args)
            _ready.add(key)
            return out
    except Exception as e:  # noqa: BLE001 - no compiler, unwritable cache, ...: use eager
        _fail(e)
        return None
