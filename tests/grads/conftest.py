import pytest
import torch

from raytag.models import SignMLP


@pytest.fixture
def tiny_model():
    """A 3-layer SignMLP with a few steps of non-trivial weights (D = 7*6+6 + 6*5+5 + 5*4+4 = 107)."""
    torch.manual_seed(0)
    model = SignMLP(7, [6, 5], 4)
    with torch.no_grad():
        for layer in model.linears:
            layer.bias.add_(0.3)          # more active ReLUs, so every layer has gradient
    return model


@pytest.fixture
def tiny_batch():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(12, 7, generator=generator)
    task_idx = torch.randint(0, 4, (12,), generator=generator)
    return x, task_idx


@pytest.fixture
def loop_gradients():
    return autograd_loop_gradients


def autograd_loop_gradients(model, x, task_idx):
    """Reference: one autograd backward per (sample, task) pair, flattened in parameter order."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        model(x[i:i + 1])[0, task_idx[i]].backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad()
    return torch.stack(rows)
