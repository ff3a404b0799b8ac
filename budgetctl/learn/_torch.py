"""The torch part of the MLP learned policy: training only (decisions run the exported weights in numpy).

Imported only when an MLP is fitted, so that neither the core nor the other models need torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._optional import import_optional

__all__ = ["fit_mlp"]


def fit_mlp(
    Z: np.ndarray,
    changes: np.ndarray,
    directions: np.ndarray,
    masks: np.ndarray,
    weights: np.ndarray,
    *,
    hidden: int,
    epochs: int,
    seed: int,
    batch_size: int = 2048,
    learning_rate: float = 2e-3,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fit a two-hidden-layer ReLU MLP with ``2 H`` outputs: log P(change) and direction per horizon.

    ``Z`` are standardised features; ``changes`` (rows, H) the probabilities that correctness
    changes, learned with the Poisson deviance on a log link; ``directions`` (rows, H) the direction
    of the change, learned with a squared loss weighted by the probability of change; ``masks[r, h]``
    says whether horizon ``h`` of row ``r`` counts. Returns ``(weight, bias)`` per layer as numpy
    arrays (``weight`` of shape (out, in)).
    """
    torch = import_optional("torch", "torch", "The MLP learned policy")
    if hidden < 1 or epochs < 1:
        raise ValueError(f"hidden and epochs must be >= 1, got {hidden} and {epochs}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see _fit.fit_model: one thread is faster on a busy machine
    try:
        return _fit(torch, Z, changes, directions, masks, weights, hidden, epochs, seed, batch_size, learning_rate)
    finally:
        torch.set_num_threads(threads)


def _fit(
    torch: Any,
    Z: np.ndarray,
    changes: np.ndarray,
    directions: np.ndarray,
    masks: np.ndarray,
    weights: np.ndarray,
    hidden: int,
    epochs: int,
    seed: int,
    batch_size: int,
    learning_rate: float,
) -> list[tuple[np.ndarray, np.ndarray]]:
    generator = torch.Generator().manual_seed(seed)
    n_in, n_out = Z.shape[1], 2 * changes.shape[1]
    layers = [
        torch.nn.Linear(n_in, hidden, dtype=torch.float64),
        torch.nn.Linear(hidden, hidden, dtype=torch.float64),
        torch.nn.Linear(hidden, n_out, dtype=torch.float64),
    ]
    with torch.no_grad():
        for layer in layers:
            bound = 1.0 / np.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
        layers[-1].weight.mul_(0.1)
        layers[-1].bias.zero_()
    net = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2])
    optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate)
    x_all = torch.from_numpy(np.ascontiguousarray(Z, dtype=np.float64))
    c_all = torch.from_numpy(np.ascontiguousarray(np.where(masks, changes, 0.0), dtype=np.float64))
    d_all = torch.from_numpy(np.ascontiguousarray(np.where(masks, directions, 0.0), dtype=np.float64))
    w_all = torch.from_numpy(np.ascontiguousarray(masks * weights[:, None], dtype=np.float64))
    half = changes.shape[1]
    n = Z.shape[0]
    steps = max(1, epochs * ((n + batch_size - 1) // batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    for _ in range(epochs):
        permutation = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            batch = permutation[start : start + batch_size]
            w = w_all[batch]
            total = w.sum()
            if total <= 0:
                continue
            out = net(x_all[batch])
            rate, direction = out[:, :half], out[:, half:]
            change = c_all[batch]
            poisson = torch.exp(rate) - change * rate  # Poisson deviance up to terms free of the model
            squared = change * (direction - d_all[batch]) ** 2
            loss = (w * (poisson + squared)).sum() / total
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return [(layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy()) for layer in layers]
