"""Cost of one token against its position: a recurrent step, a GPT with and without its KV cache.

Introduced in notebooks/09_recurrent_vectors_classifiers.ipynb.
"""

from __future__ import annotations

import numpy as np
import torch

from lmlab.inference.step import TorchStep
from lmlab.measure.plots import finish_axes, plain_log_ticks
from lmlab.measure.runtime import torch_threads
from lmlab.measure.stats import timing_verdict
from lmlab.measure.timing import time_ms
from lmlab.models.recurrent import RecurrentLanguageModel


def cost_by_position(lstm: RecurrentLanguageModel, gpt, token_ids, positions=(1, 16, 64, 127), repeat: int = 10,
                     threads: int | None = None) -> list[dict]:
    """Time one next-token prediction at each position: the LSTM's ``step`` against a GPT without and with a cache.

    At position p the model has read p tokens (``token_ids[:p]``, starting with <s>) and predicts token p + 1:
    - "LSTM step": one ``lstm.step`` on token p with the state after p − 1 tokens: O(1) in p;
    - "GPT, no cache": a forward pass over all p tokens, the output layer on the last position only
      (``logits_to_keep=1``, the same one row of logits as the other two calls): O(p) (O(p²) attention);
    - "GPT, KV cache": one new token attending to the p − 1 cached keys and values: O(p), small constant.
    The cache is cut back to p − 1 positions after each timed call (``DynamicCache.crop(-1)``, inside the time), so
    every sample is the same step. ``gpt`` is lmlab's GPTLanguageModel. Returns one dict per (model, position)
    with median_ms, p90_ms and the ``timing`` itself (``lmlab.measure.timing.time_ms``, ``repeat`` samples;
    everything on ``threads`` threads).
    Raises ValueError for a position outside [1, len(token_ids)] or beyond either model's window.
    """
    ids = torch.as_tensor(np.asarray(token_ids)).long().flatten()
    window = min(len(ids), lstm.config.n_positions, gpt.config.n_positions)
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 1 <= p <= window:
            raise ValueError(f"position={p!r} is out of range; use 1 to {window}")
    lstm.eval(), gpt.eval()
    step = TorchStep(gpt.gpt)
    rows = []
    with torch.no_grad(), torch_threads(threads):
        for p in positions:
            prefix = ids[None, :p]  # (1, p)
            state = lstm.initial_state(1)
            if p > 1:
                _, state = lstm.rnn(lstm.embed(prefix[:, :-1]), state)
            ones = torch.ones_like(prefix)
            _, past = step(prefix[:, :-1], ones[:, :-1], torch.arange(p - 1)[None], None) if p > 1 else (None, None)

            def cached(p=p, past=past):
                out = step(prefix[:, -1:], ones, torch.tensor([[p - 1]]), past)
                if past is not None:
                    past.crop(-1)  # drop the token just added: back to p - 1 positions
                return out

            calls = {"LSTM step": lambda: lstm.step(prefix[0, -1:], state),
                     "GPT, no cache": lambda: gpt.gpt(input_ids=prefix, logits_to_keep=1).logits[:, -1],
                     "GPT, KV cache": cached}
            for label, call in calls.items():
                timing = time_ms(call, repeat=repeat, threads=threads)
                rows.append({"model": label, "position": p, "median_ms": timing.median_ms, "p90_ms": timing.p90_ms,
                             "timing": timing})
    return rows



def position_cost_plot(rows: list[dict], title: str = "Cost of one token against its position"):
    """Plot median ms per token (log scale, p90 as an error bar) against position for each model of
    ``cost_by_position``'s rows. Returns the figure."""
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(11, 6))
    for label in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == label]
        median = np.array([r["median_ms"] for r in mine])
        ax.errorbar([r["position"] for r in mine], median, yerr=[np.zeros(len(mine)),
                    np.array([r["p90_ms"] for r in mine]) - median], fmt="o-", ms=8, lw=2.5, capsize=4, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    finish_axes(ax, "position (tokens already read), log scale", "ms per token (median, bar to p90), log scale",
                title)
    return fig



def position_ratios(rows: list[dict]) -> dict[str, float]:
    """Return, per model of ``cost_by_position``'s rows, its median ms at the last position over that at the first."""
    ratios = {}
    for label in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == label), key=lambda r: r["position"])
        ratios[label] = mine[-1]["median_ms"] / mine[0]["median_ms"]
    return ratios


def position_verdicts(rows: list[dict], reference: str = "LSTM step", other: str = "GPT, KV cache") -> list[str]:
    """Say, at each position of ``cost_by_position``'s rows, whether ``other`` ran faster or slower than
    ``reference`` beyond the noise of the repeats (``lmlab.measure.stats.timing_verdict``: their p10–p90 ranges
    do not overlap), with the ratio of medians. Raises ValueError for a model name not in the rows."""
    by_key = {(r["model"], r["position"]): r for r in rows}
    for name in (reference, other):
        if not any(model == name for model, _ in by_key):
            raise ValueError(f"model={name!r} is not in the rows; use one of {sorted({m for m, _ in by_key})}")
    lines = []
    for p in sorted({pos for _, pos in by_key}):
        ref, oth = by_key[reference, p], by_key[other, p]
        verdict = timing_verdict(ref["timing"], oth["timing"])
        lines.append(f"position {p:>4}: {other} takes {oth['median_ms'] / ref['median_ms']:.2f}× the {reference}'s "
                     f"median -> {verdict}")
    return lines
