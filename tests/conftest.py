import pytest
import torch


@pytest.fixture
def inputs():
    """Seven distinct inputs of dimension 4, of varied norms (mean-square about 1)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    return x * torch.linspace(0.6, 1.4, 7, dtype=torch.float64)[:, None]
