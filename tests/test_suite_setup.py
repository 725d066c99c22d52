"""The test suite's own setup (tests/conftest.py)."""

import os

import torch


def test_xdist_workers_compute_with_one_thread():
    if os.environ.get("PYTEST_XDIST_WORKER"):
        assert torch.get_num_threads() == 1
