import numpy as np
import pytest
import torch

from lmlab.train.descent import (
    SGD,
    Adam,
    Momentum,
    descend,
    draw_contours,
    linear_data,
    loss_surface,
    squared_error,
    squared_error_gradient,
    squared_error_hessian,
)


def problem(seed=0):
    """A small least-squares problem with a few parameter tensors, so every optimizer has work to do."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 5, generator=g), torch.randn(64, 3, generator=g)
    w, b = torch.randn(5, 3, generator=g), torch.randn(3, generator=g)
    return x, y, [w, b]


def run(optimizer_for, steps=25, seed=0):
    x, y, params = problem(seed)
    params = [p.clone().requires_grad_(True) for p in params]
    optimizer = optimizer_for(params)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = ((x @ params[0] + params[1] - y) ** 2).mean()
        loss.backward()
        optimizer.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("ours, theirs", [
    (lambda p: SGD(p, lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    (lambda p: Momentum(p, lr=0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    (lambda p: Adam(p, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (lambda p: Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6),
     lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
], ids=["sgd", "momentum", "adam", "adam-betas"])
def test_hand_written_steps_match_torch_optim(ours, theirs):
    for a, b in zip(run(ours), run(theirs)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_squared_error_gradient_matches_autograd():
    x, y = linear_data(50, seed=1)
    w = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-0.2, dtype=torch.float64, requires_grad=True)
    squared_error(w, b, x, y).backward()
    grad_w, grad_b = squared_error_gradient(w.item(), b.item(), x, y)
    assert grad_w == pytest.approx(float(w.grad), rel=1e-12)
    assert grad_b == pytest.approx(float(b.grad), rel=1e-12)


def test_linear_data_follows_y_equals_2x_plus_1():
    x, y = linear_data(2000, noise=0.1, seed=0)
    slope, intercept = np.polyfit(x.numpy(), y.numpy(), 1)
    assert slope == pytest.approx(2.0, abs=0.02) and intercept == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("batch_size", [None, 1, 8])
def test_descent_finds_the_line(batch_size):
    x, y = linear_data(200, noise=0.1, seed=0)
    path = descend(x, y, lr=0.1, steps=300, batch_size=batch_size, seed=0)
    w, b = path[-1]
    assert w == pytest.approx(2.0, abs=0.1) and b == pytest.approx(1.0, abs=0.1)
    assert len(path) == 301  # the start and every step


def test_too_large_a_learning_rate_diverges():
    x, y = linear_data(200, seed=0)
    path = descend(x, y, lr=3.0, steps=20)
    assert abs(path[-1][0]) > 1e3


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": 0}, "lr="), ({"lr": -1.0}, "lr="), ({"lr": float("nan")}, "lr="),
    ({"batch_size": 0}, "batch_size="), ({"steps": 0}, "steps="),
])
def test_bad_settings_are_clear_errors(kwargs, match):
    x, y = linear_data(20)
    settings = {"lr": 0.1, "steps": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        descend(x, y, **settings)


def test_optimizers_reject_bad_settings():
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="lr="):
        SGD(params, lr=0)
    with pytest.raises(ValueError, match="momentum="):
        Momentum(params, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="betas="):
        Adam(params, lr=0.1, betas=(0.9, 1.0))


def test_hessian_matches_autograd_and_sets_the_step_limit():
    x, y = linear_data(100, noise=0.5, seed=0)
    by_autograd = torch.autograd.functional.hessian(lambda p: squared_error(p[0], p[1], x, y),
                                                    torch.tensor([0.3, -0.2], dtype=torch.float64))
    torch.testing.assert_close(squared_error_hessian(x), by_autograd)
    limit = 2 / torch.linalg.eigvalsh(squared_error_hessian(x)).max().item()
    assert abs(descend(x, y, lr=0.95 * limit, steps=200)[-1][0] - 2) < 0.2  # just inside the limit: converges
    assert abs(descend(x, y, lr=1.05 * limit, steps=200)[-1][0]) > 1e3  # just outside: diverges
    with pytest.raises(ValueError, match="x is empty"):
        squared_error_hessian(torch.zeros(0))


def test_loss_surface_is_the_loss_on_a_grid():
    x, y = linear_data(30, seed=2)
    w_grid, b_grid, surface = loss_surface(x, y, w_range=(-1.0, 3.0), b_range=(0.0, 2.0), points=5)
    assert surface.shape == w_grid.shape == b_grid.shape == (5, 5)
    assert w_grid[0, 0] == -1.0 and w_grid[-1, 0] == 3.0 and b_grid[0, -1] == 2.0
    assert surface[3, 1].item() == pytest.approx(squared_error(w_grid[3, 1], b_grid[3, 1], x, y).item(), rel=1e-12)
    with pytest.raises(ValueError, match="points=1"):
        loss_surface(x, y, points=1)
    with pytest.raises(ValueError, match="b_range=\\(2.0, 2.0\\)"):
        loss_surface(x, y, b_range=(2.0, 2.0))


def test_draw_contours_labels_the_plot():
    import matplotlib.pyplot as plt

    x, y = linear_data(30, seed=2)
    fig, ax = plt.subplots()
    draw_contours(ax, x, y, "a title")
    assert ax.get_title() == "a title" and ax.get_xlabel() == "w" and ax.get_ylabel() == "b"
    assert ax.get_legend_handles_labels()[1] == ["true line: w = 2, b = 1"]
    assert ax.collections  # the contour lines
    plt.close(fig)


def test_adam_step_ratios_match_the_optimizer_and_start_at_the_gradient_sign():
    from lmlab.train.descent import adam_step_ratios

    x, y, params = problem(1)
    params = [params[1].clone().requires_grad_(True)]
    optimizer, gradients, inside = Adam(params, lr=0.01), [], []
    for _ in range(30):
        optimizer.zero_grad()
        ((x[:, :3] * params[0] - y) ** 2).mean().backward()
        gradients.append(params[0].grad.clone().numpy())
        optimizer.step()
        m_hat, v_hat = optimizer.m[0] / (1 - 0.9 ** optimizer.t), optimizer.v[0] / (1 - 0.999 ** optimizer.t)
        inside.append((m_hat / (v_hat.sqrt() + 1e-8)).numpy())
    ratios = adam_step_ratios(np.array(gradients))
    assert ratios.shape == (30, 3)
    np.testing.assert_allclose(ratios, np.array(inside), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ratios[0], np.sign(gradients[0]), atol=1e-6)  # m̂₁ = g₁, v̂₁ = g₁²
    steady = adam_step_ratios(np.full((50, 1), 0.3))  # a constant gradient: m̂ = g, v̂ = g², ratio 1 at every step
    np.testing.assert_allclose(steady, 1.0, atol=1e-6)
    shrinking = adam_step_ratios(0.5 ** np.arange(40.0)[:, None])  # v̂ remembers the early, larger gradients
    assert shrinking[-1, 0] < 0.05  # ratio 1 at step 1; g fell 2⁴⁰-fold, the ratio only about 50-fold


def test_adam_step_ratios_refuse_bad_input():
    from lmlab.train.descent import adam_step_ratios

    with pytest.raises(ValueError, match="gradients="):
        adam_step_ratios(np.zeros(5))
    with pytest.raises(ValueError, match="betas="):
        adam_step_ratios(np.zeros((5, 1)), betas=(0.9, 1.0))


def test_draw_contours_can_add_a_colour_bar_in_plain_loss_values():
    import matplotlib.pyplot as plt

    x, y = linear_data(30, seed=2)
    fig, ax = plt.subplots()
    bar = draw_contours(ax, x, y, "a title", colorbar=True)
    assert bar is not None and "J(w, b)" in bar.ax.get_ylabel() and len(fig.axes) == 2
    fig.canvas.draw()
    labels = [t.get_text() for t in bar.ax.get_yticklabels() if t.get_text()]
    assert labels and all("e" not in label and "^" not in label for label in labels)  # plain numbers, not 10^x
    fig2, ax2 = plt.subplots()
    assert draw_contours(ax2, x, y, "t") is None and len(fig2.axes) == 1
    plt.close(fig)
    plt.close(fig2)
