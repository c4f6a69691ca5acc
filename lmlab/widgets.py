"""ipywidgets panels for trying models live. Each answers within a second for the small models.

Introduced in notebooks/01_ngram_language_models.ipynb.
"""

from __future__ import annotations

from typing import Callable, Mapping

import io

import torch
from matplotlib.figure import Figure

from lmlab.bench import Timing, time_ms
from lmlab.lm import LanguageModel, make_context


class NextTokenPanel:
    """Type a context, pick a model, see the next-token distribution and how long it took to compute."""

    def __init__(self, models: Mapping[str, LanguageModel], tokenize: Callable[[str], list[str]],
                 text: str = "", k: int = 10):
        import ipywidgets as widgets

        if not models:
            raise ValueError("models is empty: the panel needs at least one model to query")
        if not 1 <= k <= min(len(m.vocab) for m in models.values()):
            raise ValueError(f"k={k!r} is out of range; use 1 to the smallest vocabulary size")
        self.models, self.tokenize, self.k = dict(models), tokenize, k
        self.text = widgets.Text(value=text, description="context", layout=widgets.Layout(width="60%"))
        self.choice = widgets.Dropdown(options=list(self.models), description="model")
        # The chart is a PNG in an Image widget: redrawing changes widget state only, never the cell's output.
        self.chart = widgets.Image(format="png")
        self.info = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox([self.text, self.choice]), self.info, self.chart])
        self.text.observe(lambda _: self.refresh(), names="value")
        self.choice.observe(lambda _: self.refresh(), names="value")
        self.refresh()

    def predict(self, text: str, name: str) -> tuple[list[tuple[str, float]], Timing, list[str]]:
        """Return the top-k (token, probability) after ``text``, the time the model took, and unknown words."""
        model = self.models[name]
        context, unknown = make_context(model, self.tokenize(text))
        with torch.no_grad():
            timing = time_ms(model.next_token_logprobs, context, warmup=1, repeat=5)
            probs = model.next_token_logprobs(context)[0].exp()
        values, ids = probs.topk(self.k)
        return [(model.vocab.itos[i], float(p)) for p, i in zip(values.tolist(), ids.tolist())], timing, unknown

    def refresh(self) -> None:
        top, timing, unknown = self.predict(self.text.value, self.choice.value)
        fig = Figure(figsize=(9, 4))
        ax = fig.subplots()
        ax.barh([tok for tok, _ in top][::-1], [p for _, p in top][::-1], color="tab:blue")
        ax.set_xlabel("P(next token | context)", fontsize=13)
        ax.set_title(f"the {self.k} most likely next tokens ({self.choice.value})", fontsize=13)
        ax.tick_params(labelsize=12)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        self.chart.value = buffer.getvalue()
        note = f" Not in the vocabulary, read as &lt;unk&gt;: {', '.join(unknown)}." if unknown else ""
        self.info.value = f"<b>{self.choice.value}</b> computed this in {timing}.{note}"
