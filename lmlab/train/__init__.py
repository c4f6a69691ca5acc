"""Training: gradient descent by hand, the training loop, loss curves.

Modules, each importing only those above it in the course:
- ``descent``: Gradient descent written by hand: θ ← θ − α ∇J(θ), and the momentum and Adam variants.
- ``loop``: Training: a seeded loop with a progress bar and validation curves, and the presets that made data/.
- ``curves``: Training curves over several seeds: a band per setting, the time to reach a target loss, and an honest
  verdict.
"""

from lmlab.train.descent import (
    SGD, Adam, Momentum, adam_step_ratios, check_lr, descend, draw_contours, linear_data, loss_surface, squared_error,
    squared_error_gradient, squared_error_hessian,
)
from lmlab.train.loop import (
    PRESETS, History, TimedHistory, compare_optimizers, describe_race, distill, distillation_loss,
    distillation_race, distillation_trials, describe_trials, fine_tune, nll_difference, preset_data, race_plot,
    train_model, train_preset, train_timed,
    training_data,
)
from lmlab.train.curves import (
    TargetTime, first_at_or_below, format_target_table, loss_bands, seed_comparison, seed_verdict,
    steps_to_stay_below, target_verdict, time_to_target,
)

__all__ = [
    "check_lr", "SGD", "Momentum", "Adam", "linear_data", "squared_error", "squared_error_gradient", "descend",
    "squared_error_hessian", "loss_surface", "draw_contours", "PRESETS", "History", "train_model",
    "compare_optimizers", "training_data", "fine_tune", "distillation_loss", "distill", "preset_data",
    "train_preset", "TimedHistory", "train_timed", "distillation_race", "nll_difference", "describe_race",
    "race_plot", "TargetTime", "first_at_or_below", "time_to_target", "format_target_table",
    "target_verdict", "loss_bands", "adam_step_ratios", "steps_to_stay_below", "seed_comparison", "seed_verdict",
    "distillation_trials", "describe_trials",
]
