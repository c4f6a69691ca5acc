"""Gradient descent written by hand: θ ← θ − α ∇J(θ), and the momentum and Adam variants.

Introduced in notebooks/03_gradient_descent.ipynb. Each optimizer here matches ``torch.optim``
(tests/test_descent.py checks SGD, SGD with momentum, and Adam to within 1e-6).

The worked example is a straight-line fit y ≈ w·x + b with the squared error
    J(w, b) = ½ · mean_i (y_i − w·x_i − b)²,
whose gradient is ∂J/∂w = −mean_i (y_i − w·x_i − b)·x_i and ∂J/∂b = −mean_i (y_i − w·x_i − b).
(A squared error compares y with the prediction w·x + b itself, not with sign(w·x).)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from lmlab.measure.runtime import check_int


def check_lr(lr: float) -> float:
    """Return ``lr`` if it is a finite number > 0, else raise ValueError naming it."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr={lr!r} is out of range; the learning rate must be a finite number > 0")
    return float(lr)


class SGD:
    """Plain gradient descent on each parameter: θ ← θ − α g."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float):
        self.params, self.lr = list(params), check_lr(lr)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p -= self.lr * p.grad


class Momentum(SGD):
    """Gradient descent with momentum: v ← μ v + g;  θ ← θ − α v (torch.optim.SGD's form)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.9):
        super().__init__(params, lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum={momentum!r} is out of range; use a number in [0, 1)")
        self.momentum = momentum
        self.velocity: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            v = self.velocity[i]
            v = p.grad.clone() if v is None else self.momentum * v + p.grad
            self.velocity[i] = v
            p -= self.lr * v


class Adam(SGD):
    """Adam: running means of the gradient and its square, bias-corrected, set each parameter's step size.

    m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²;  m̂ = m / (1 − β1ᵗ);  v̂ = v / (1 − β2ᵗ);
    θ ← θ − α m̂ / (√v̂ + ε).
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        super().__init__(params, lr)
        if not all(0 <= beta < 1 for beta in betas) or len(betas) != 2:
            raise ValueError(f"betas={betas!r} is out of range; use two numbers in [0, 1)")
        self.betas, self.eps, self.t = betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        beta1, beta2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(beta1).add_((1 - beta1) * p.grad)
            v.mul_(beta2).add_((1 - beta2) * p.grad * p.grad)
            m_hat = m / (1 - beta1 ** self.t)
            v_hat = v / (1 - beta2 ** self.t)
            p -= self.lr * m_hat / (v_hat.sqrt() + self.eps)


def adam_step_ratios(gradients, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> np.ndarray:
    """Return Adam's step in units of α, m̂ₜ / (√v̂ₜ + ε), at each step of a sequence of gradients.

    ``gradients`` has shape (steps, parameters): row t is gₜ. With m₀ = v₀ = 0,
    mₜ = β1 mₜ₋₁ + (1 − β1) gₜ, vₜ = β2 vₜ₋₁ + (1 − β2) gₜ², m̂ₜ = mₜ / (1 − β1ᵗ), v̂ₜ = vₜ / (1 − β2ᵗ), as ``Adam``
    computes them; the step Adam takes is α times the returned row. At t = 1 it is sign(g₁) (m̂₁ = g₁, v̂₁ = g₁²);
    under a steady gradient it stays near ±1; as the gradient shrinks it falls, because v̂ averages g² over about
    1/(1 − β2) steps and so remembers the larger gradients of earlier steps. Raises ValueError for gradients that
    are not a 2-d array of at least one step, or betas outside [0, 1).
    """
    grads = np.asarray(gradients, dtype=np.float64)
    if grads.ndim != 2 or len(grads) == 0:
        raise ValueError(f"gradients={grads.shape!r} (shape) is out of range; give an array (steps >= 1, parameters)")
    if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
        raise ValueError(f"betas={betas!r} is out of range; use two numbers in [0, 1)")
    beta1, beta2 = betas
    m, v, ratios = np.zeros(grads.shape[1]), np.zeros(grads.shape[1]), np.empty_like(grads)
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        ratios[t - 1] = (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
    return ratios


def linear_data(n: int = 100, noise: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return x ~ Uniform(-2, 2) and y = 2x + 1 + noise·N(0, 1), float64, seeded."""
    check_int("n", n, 1)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, n)
    return torch.from_numpy(x), torch.from_numpy(2 * x + 1 + noise * rng.standard_normal(n))


def squared_error(w, b, x: torch.Tensor, y: torch.Tensor):
    """J(w, b) = ½ · mean (y − w·x − b)²."""
    return 0.5 * ((y - w * x - b) ** 2).mean()


def squared_error_gradient(w: float, b: float, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(∂J/∂w, ∂J/∂b) = (−mean (y − w·x − b)·x, −mean (y − w·x − b)), by hand."""
    residual = y - w * x - b
    return float(-(residual * x).mean()), float(-residual.mean())


def descend(x: torch.Tensor, y: torch.Tensor, lr: float, steps: int, batch_size: int | None = None,
            start: tuple[float, float] = (-2.0, 3.0), seed: int = 0) -> list[tuple[float, float]]:
    """Fit y ≈ w·x + b by gradient descent; return the path of (w, b), start included.

    ``batch_size=None`` uses every example per step (batch descent), 1 is stochastic descent, and
    anything between is mini-batch descent (examples drawn without replacement, reshuffled each epoch).
    Raises ValueError for lr <= 0, steps < 1 or batch_size < 1.
    """
    check_lr(lr)
    check_int("steps", steps, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    rng = np.random.default_rng(seed)
    w, b = start
    path = [(w, b)]
    order, position = rng.permutation(len(x)), 0
    for _ in range(steps):
        if batch_size is None:
            xb, yb = x, y
        else:
            if position + batch_size > len(x):
                order, position = rng.permutation(len(x)), 0
            rows = torch.from_numpy(order[position:position + batch_size])
            position += batch_size
            xb, yb = x[rows], y[rows]
        grad_w, grad_b = squared_error_gradient(w, b, xb, yb)
        w, b = w - lr * grad_w, b - lr * grad_b
        path.append((w, b))
    return path


def squared_error_hessian(x: torch.Tensor) -> torch.Tensor:
    """Return the Hessian of J(w, b), the same at every (w, b): H = mean_i [[x_i², x_i], [x_i, 1]].

    Its largest eigenvalue λ is the loss's sharpest curvature; batch descent diverges for α > 2/λ.
    Raises ValueError for an empty ``x``.
    """
    if len(x) == 0:
        raise ValueError("x is empty; the Hessian is a mean over at least one example")
    mean_x = x.mean()
    return torch.stack([torch.stack([(x * x).mean(), mean_x]), torch.stack([mean_x, torch.ones_like(mean_x)])])


def loss_surface(x: torch.Tensor, y: torch.Tensor, w_range: tuple[float, float] = (-3.0, 5.0),
                 b_range: tuple[float, float] = (-2.0, 4.0), points: int = 120
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (w_grid, b_grid, J) with J(w, b) = ½ · mean (y − w·x − b)² on a ``points`` × ``points`` grid.

    Raises ValueError for points < 2 or a range whose low end is not below its high end.
    """
    check_int("points", points, 2)
    for name, (low, high) in (("w_range", w_range), ("b_range", b_range)):
        if not low < high:
            raise ValueError(f"{name}={(low, high)!r} is out of range; use (low, high) with low < high")
    w_grid, b_grid = torch.meshgrid(torch.linspace(*w_range, points, dtype=x.dtype),
                                    torch.linspace(*b_range, points, dtype=x.dtype), indexing="ij")
    surface = 0.5 * ((y - w_grid[..., None] * x - b_grid[..., None]) ** 2).mean(-1)  # (points, points)
    return w_grid, b_grid, surface


def draw_contours(ax, x: torch.Tensor, y: torch.Tensor, title: str, true_line: tuple[float, float] = (2.0, 1.0),
                  colorbar: bool = False):
    """Draw the contour lines of log10 J(w, b) on ``ax``, mark the true line's (w, b) with a star, label the axes.

    With ``colorbar=True`` a colour bar beside the plot reads the colours back as J itself (ticks in plain numbers,
    0.1, 1, 10, on the log10 scale the lines are drawn on); returns that Colorbar, else None.
    """
    from matplotlib.ticker import FuncFormatter

    w_grid, b_grid, surface = loss_surface(x, y)
    lines = ax.contour(w_grid, b_grid, surface.log10(), levels=25, cmap="viridis")
    ax.plot(*true_line, "k*", ms=16, label=f"true line: w = {true_line[0]:g}, b = {true_line[1]:g}")
    ax.set_xlabel("w", fontsize=14)
    ax.set_ylabel("b", fontsize=14)
    ax.set_title(title, fontsize=14)
    ax.tick_params(labelsize=12)
    if not colorbar:
        return None
    bar = ax.figure.colorbar(lines, ax=ax)
    bar.set_label("J(w, b) on each line (log scale)", fontsize=14)
    low, high = float(min(lines.levels)), float(max(lines.levels))
    nice = [k * 10.0 ** e for e in range(-6, 7) for k in (1, 3)]  # J values worth a tick: 0.1, 0.3, 1, 3, ...
    bar.set_ticks([math.log10(j) for j in nice if low <= math.log10(j) <= high])
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{10 ** v:.3g}"))
    bar.ax.tick_params(labelsize=12)
    return bar
