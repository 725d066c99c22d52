import os

# Under pytest-xdist (``make test`` runs two workers on two cores) each worker computes
# with one thread: two workers whose OpenMP threads spin while waiting for each other's
# cores ran the Monte-Carlo tests 4x slower (332 s against 78 s for test_monte_carlo.py
# and test_spiky.py). It must be set before torch (and numpy's BLAS) are imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def inputs():
    """Seven distinct inputs of dimension 4, of varied norms (mean-square about 1)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    return x * torch.linspace(0.6, 1.4, 7, dtype=torch.float64)[:, None]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks (the study tests): one thread avoids OpenMP contention on a shared
    machine; torch's setting is restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
