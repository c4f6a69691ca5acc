"""ipywidgets panels for trying models live. Each answers within a second for the small models.

Introduced in notebooks/01_ngram_language_models.ipynb.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from matplotlib.figure import Figure
from torch import nn

from lmlab.inference.decode import CausalLM, generate, make_step, stream, stream_speed
from lmlab.measure.runtime import check_int
from lmlab.measure.stats import binomial_se, compare
from lmlab.measure.timing import Stopwatch, Timing, time_ms
from lmlab.models.lm import LanguageModel, make_context
from lmlab.train.descent import check_lr, descend, squared_error

if TYPE_CHECKING:
    from lmlab.compress.methods import Method
    from lmlab.tasks.classify import TextClassifier


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


class DescentPanel:
    """Sliders for the learning rate and batch size of gradient descent on y ≈ w·x + b; redraws the path."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, lr: float = 0.1, batch_size: int = 16, steps: int = 60):
        import ipywidgets as widgets


        check_lr(lr)
        self.x, self.y, self.steps = x, y, steps
        self.lr = widgets.FloatLogSlider(value=lr, base=10, min=-3, max=0.3, step=0.05, description="learning rate",
                                         readout_format=".3f", style={"description_width": "initial"})
        self.batch = widgets.IntSlider(value=batch_size, min=1, max=len(x), description="batch size",
                                       style={"description_width": "initial"})
        self.chart = widgets.Image(format="png")
        self.info = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox([self.lr, self.batch]), self.info, self.chart])
        self.lr.observe(lambda _: self.refresh(), names="value")
        self.batch.observe(lambda _: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        path = descend(self.x, self.y, lr=self.lr.value, steps=self.steps, batch_size=self.batch.value, seed=0)
        losses = [float(squared_error(w, b, self.x, self.y)) for w, b in path]
        fig = Figure(figsize=(11, 4.2))
        left, right = fig.subplots(1, 2)
        w_grid, b_grid = torch.meshgrid(torch.linspace(-3, 5, 80), torch.linspace(-2, 4, 80), indexing="ij")
        surface = 0.5 * ((self.y[None, None, :] - w_grid[..., None] * self.x - b_grid[..., None]) ** 2).mean(-1)
        left.contour(w_grid, b_grid, surface.log10(), levels=20, cmap="viridis")
        ws, bs = zip(*path)
        left.plot(ws, bs, "o-", color="tab:red", ms=3)
        left.set(xlim=(-3, 5), ylim=(-2, 4), xlabel="w", ylabel="b", title="path on the loss surface")
        right.semilogy(losses, color="tab:red")
        right.set(xlabel="step", ylabel="J(w, b), log scale", title="loss")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=72)
        self.chart.value = buffer.getvalue()
        kind = "batch" if self.batch.value == len(self.x) else "stochastic" if self.batch.value == 1 else "mini-batch"
        final = losses[-1]
        verdict = "diverged" if not final < losses[0] * 10 else f"final loss {final:.4f}"
        self.info.value = (f"{kind} descent, α = {self.lr.value:.3f}, batch {self.batch.value}: {verdict}; "
                           f"w = {ws[-1]:.4g}, b = {bs[-1]:.4g} after {self.steps} steps")


class CompressionPanel:
    """Pick a model, a method and its setting: the panel compresses a copy, scores it and redraws.

    ``models`` maps a name to (model, evaluate), where ``evaluate(model)`` returns a dict with
    "accuracy" and "perplexity" on a fixed validation slice; ``methods`` maps a name to a
    ``lmlab.compress.methods.Method`` (``lmlab.compress.methods.METHODS`` holds every technique of chapters 04 and 05).
    Every setting tried is kept as a point, so the plot builds up accuracy against the setting; where the
    evaluation reports its prediction count ("tokens"), a band of ± two standard errors around the uncompressed
    accuracy shows what is noise. A method that cannot apply to the chosen model (``Method.refuses``) is not
    offered for it; a setting the method refuses (a ValueError) is shown as the error's message, with no chart.
    Introduced in notebooks/04_quantization.ipynb; chapter 05 uses it for pruning.
    """

    def __init__(self, models: Mapping[str, tuple[nn.Module, Callable[[nn.Module], dict]]],
                 methods: Mapping[str, Method]):
        import ipywidgets as widgets

        if not models or not methods:
            raise ValueError("models and methods must each hold at least one entry")
        self.models, self.methods = dict(models), dict(methods)
        self.model_choice = widgets.Dropdown(options=list(self.models), description="model")
        self.method_choice = widgets.Dropdown(options=list(self.methods), description="method",
                                              style={"description_width": "initial"})
        self.sliders = {name: self._slider(widgets, knob) for name, knob in self.methods.items()}
        self.controls = widgets.HBox([self.model_choice, self.method_choice, self.sliders[self.method_choice.value]])
        self.chart = widgets.Image(format="png")  # redrawing changes widget state only, never the cell's output
        self.info = widgets.HTML()
        self.widget = widgets.VBox([self.controls, self.info, self.chart])
        self.reference: dict[str, dict] = {}
        self.tried: dict[tuple[str, str], dict[float, float]] = {}
        self.model_choice.observe(lambda _: self._offer(), names="value")
        self._offering = False  # True while _offer changes the method menu: it redraws once itself
        self.method_choice.observe(lambda _: None if self._offering else self._switch(), names="value")
        for slider in self.sliders.values():
            slider.observe(lambda _: self.refresh(), names="value")
        self.hidden: dict[str, str] = {}
        self._offer()

    def _offer(self) -> None:
        """Offer the methods that can apply to the chosen model (switching away from one that cannot), then redraw."""
        model = self.models[self.model_choice.value][0]
        self.hidden = {name: why for name, knob in self.methods.items() if (why := knob.refuses(model))}
        offered = [name for name in self.methods if name not in self.hidden]
        if not offered:
            raise ValueError(f"no method applies to model {self.model_choice.value!r}: {self.hidden}")
        if list(self.method_choice.options) != offered:
            current, self._offering = self.method_choice.value, True
            try:
                self.method_choice.options = offered
                self.method_choice.value = current if current in offered else offered[0]
            finally:
                self._offering = False
        self._switch()

    @staticmethod
    def _slider(widgets, knob: Method):
        common = dict(value=knob.value, description=knob.label, continuous_update=False,
                      style={"description_width": "initial"})
        if knob.log:
            return widgets.FloatLogSlider(base=10, min=math.log10(knob.minimum), max=math.log10(knob.maximum),
                                          step=knob.step, readout_format=".3g", **common)
        if knob.integer:
            return widgets.IntSlider(min=int(knob.minimum), max=int(knob.maximum), step=int(knob.step), **common)
        return widgets.FloatSlider(min=knob.minimum, max=knob.maximum, step=knob.step, readout_format=".3g", **common)

    def _switch(self) -> None:
        self.controls.children = (self.model_choice, self.method_choice, self.sliders[self.method_choice.value])
        self.refresh()

    def score(self, model_name: str, method_name: str, value: float) -> dict:
        """Compress ``model_name`` with a method at ``value`` and score it: accuracy, perplexity, size, seconds."""
        model, evaluate_fn = self.models[model_name]
        knob = self.methods[method_name]
        with Stopwatch() as clock:
            compressed = knob.apply(model, value)
            compressed = getattr(compressed, "model", compressed)
            assert isinstance(compressed, nn.Module)  # Method.apply returns a model, or a Compressed holding one
            with torch.no_grad():
                scores = evaluate_fn(compressed)
            params = {id(p): p for p in compressed.parameters()}.values()
            size = (knob.size_bytes(model, value) if knob.size_bytes
                    else sum(p.numel() * p.element_size() for p in params))
        return {**scores, "size_bytes": size, "seconds": clock.ms / 1e3}

    def refresh(self) -> None:
        model_name, method_name = self.model_choice.value, self.method_choice.value
        value = self.sliders[method_name].value
        if model_name not in self.reference:
            model, evaluate_fn = self.models[model_name]
            with torch.no_grad():
                self.reference[model_name] = evaluate_fn(model)
        try:
            result = self.score(model_name, method_name, value)
        except ValueError as err:
            self.chart.value = b""  # no chart of an earlier setting under this message
            self.info.value = f"<b>{method_name}</b> at {value:g}: {html.escape(str(err))}"
            return
        points = self.tried.setdefault((model_name, method_name), {})
        points[value] = result["accuracy"]
        reference = self.reference[model_name]
        fig = Figure(figsize=(9, 4))
        ax = fig.subplots()
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], "o-", color="tab:blue", ms=7, label="settings tried")
        ax.plot([value], [result["accuracy"]], "o", color="tab:red", ms=11, label="this setting")
        ax.axhline(reference["accuracy"], color="black", ls="--", lw=1.2, label="uncompressed")
        noise = _two_standard_errors(reference)
        if noise:
            ax.axhspan(reference["accuracy"] - noise, reference["accuracy"] + noise, color="gray", alpha=0.2,
                       label="uncompressed ± 2 standard errors")
        if self.methods[method_name].log:
            ax.set_xscale("log")
        if self.methods[method_name].integer:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(self.methods[method_name].label, fontsize=13)
        ax.set_ylabel("validation accuracy", fontsize=13)
        ax.set_title(f"{model_name}: {method_name}", fontsize=13)
        ax.tick_params(labelsize=12)
        ax.legend(fontsize=11)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=72)
        self.chart.value = buffer.getvalue()
        se = (_two_standard_errors(result) / 2, _two_standard_errors(reference) / 2)
        verdict = ("" if not any(se) else ", within noise"
                   if compare(result["accuracy"], reference["accuracy"], se=se).within_noise else ", beyond noise")
        hidden = "".join(f"; not offered here: {name} ({why})" for name, why in self.hidden.items())
        self.info.value = (f"<b>{model_name}</b>, {method_name} at {value:g}: accuracy {result['accuracy']:.4f} "
                           f"(uncompressed {reference['accuracy']:.4f}{verdict}), "
                           f"perplexity {result['perplexity']:.2f} "
                           f"(uncompressed {reference['perplexity']:.2f}), {result['size_bytes'] / 1e6:.3f} MB; "
                           f"compressed and scored in {result['seconds'] * 1e3:.0f} ms{html.escape(hidden)}")


def _two_standard_errors(scores: dict) -> float:
    """2 · sqrt(p (1 − p) / n) (``binomial_se``) for an evaluation that reports its prediction count as "tokens";
    0 otherwise."""
    n = scores.get("tokens")
    return 2 * binomial_se(scores["accuracy"], int(n)) if n else 0.0


class DecodePanel:
    """Choose a model, a path (eager float32 or ONNX Runtime int8), the KV cache and a batch size: the panel
    streams a reply token by token and shows the time to first token and the tokens per second.

    ``models`` maps a name to an ``lmlab.inference.decode.CausalLM``. A batch repeats the prompt ``batch`` times (every
    row computes the same reply; the speed is the batch's). Introduced in notebooks/06_acceleration.ipynb.
    """

    PATHS = {"float32, PyTorch eager": "eager", "int8, ONNX Runtime": "onnx-int8"}

    def __init__(self, models: Mapping[str, CausalLM], prompt: str = "", max_new_tokens: int = 24):
        import ipywidgets as widgets


        if not models:
            raise ValueError("models is empty: the panel needs at least one model to decode with")
        check_int("max_new_tokens", max_new_tokens, 1)
        self.models, self.max_new_tokens = dict(models), max_new_tokens
        self.steps: dict[tuple[str, str], object] = {}  # step functions, made once (an export takes seconds)
        self.prompt = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="60%"))
        self.choice = widgets.Dropdown(options=list(self.models), description="model")
        self.path = widgets.Dropdown(options=list(self.PATHS), description="path")
        self.cache = widgets.Checkbox(value=True, description="KV cache")
        self.batch = widgets.IntSlider(value=1, min=1, max=16, description="batch", continuous_update=False)
        self.go = widgets.Button(description="generate")
        self.reply = widgets.HTML()
        self.info = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox([self.prompt, self.choice]),
                                    widgets.HBox([self.path, self.cache, self.batch, self.go]), self.reply, self.info])
        self.go.on_click(lambda _: self.run())

    def step_for(self, name: str, path: str):
        """Return (and keep) the step function of a model and path."""
        key = (name, path)
        if key not in self.steps:
            self.steps[key] = make_step(self.models[name], self.PATHS[path])
        return self.steps[key]

    def run(self) -> dict:
        """Generate for the current settings, streaming the reply into the panel; return the figures shown."""
        name, path, batch = self.choice.value, self.path.value, self.batch.value
        lm, step = self.models[name], self.step_for(name, self.path.value)
        options = dict(cache=self.cache.value, step=step)
        try:
            if batch == 1:
                shown, pieces = "", []
                for piece in stream(lm, self.prompt.value, self.max_new_tokens, **options):
                    pieces.append(piece)
                    shown += piece.text
                    self.reply.value = f"<b>{html.escape(self.prompt.value)}</b>{html.escape(shown)}"
                ttft_ms, rate = stream_speed(pieces)
            else:
                result = generate(lm, [self.prompt.value] * batch, self.max_new_tokens, **options)
                self.reply.value = f"<b>{html.escape(self.prompt.value)}</b>{html.escape(result.texts[0])}"
                ttft_ms, rate = result.ttft_ms, result.tokens_per_s
        except ValueError as err:
            self.info.value = html.escape(str(err))
            return {"error": str(err)}
        self.info.value = (f"<b>{name}</b>, {path}, cache {'on' if self.cache.value else 'off'}, batch {batch}: "
                           f"first token after {ttft_ms:.0f} ms, then {rate:.1f} tokens/s")
        return {"ttft_ms": ttft_ms, "tokens_per_s": rate}


class ClassifyPanel:
    """Type a text, see every classifier's probability for each class, and how long each took to answer.

    Introduced in notebooks/09_recurrent_vectors_classifiers.ipynb. ``classifiers`` maps a name to a fitted
    ``lmlab.tasks.classify.TextClassifier``; all must share one set of classes. A text a classifier refuses (an
    empty one) is shown as the error's message, with no chart.
    """

    def __init__(self, classifiers: Mapping[str, TextClassifier], text: str = ""):
        import ipywidgets as widgets

        if not classifiers:
            raise ValueError("classifiers is empty: the panel needs at least one fitted classifier")
        classes = {tuple(c.classes) for c in classifiers.values()}
        if len(classes) != 1 or not next(iter(classes)):
            raise ValueError(f"classifiers answer different class lists {sorted(classes)}; "
                             "give one task's classifiers, each fitted")
        self.classifiers, self.classes = dict(classifiers), next(iter(classes))
        self.text = widgets.Text(value=text, description="text", layout=widgets.Layout(width="70%"))
        self.chart = widgets.Image(format="png")  # redrawing changes widget state only, never the cell's output
        self.info = widgets.HTML()
        self.widget = widgets.VBox([self.text, self.info, self.chart])
        self.text.observe(lambda _: self.refresh(), names="value")
        self.refresh()

    def predict(self, text: str) -> dict[str, tuple[list[float], Timing]]:
        """Return, per classifier, its class probabilities for ``text`` (summing to one) and the time of the call."""
        answers = {}
        for name, clf in self.classifiers.items():
            timing = time_ms(clf.predict_logits, [text], warmup=1, repeat=5)
            with torch.no_grad():
                probs = torch.softmax(clf.predict_logits([text]).double(), dim=-1)[0]
            answers[name] = (probs.tolist(), timing)
        return answers

    def refresh(self) -> None:
        try:
            answers = self.predict(self.text.value)
        except ValueError as err:
            self.chart.value = b""  # no chart of an earlier text under this message
            self.info.value = f"<b>refused</b>: {html.escape(str(err))}"
            return
        fig = Figure(figsize=(10, 1.4 + 0.3 * len(self.classes) * len(answers) ** 0.5))
        ax = fig.subplots()
        n, height = len(self.classes), 0.8 / len(answers)
        for i, (name, (probs, _)) in enumerate(answers.items()):  # the first class on top, one bar per classifier
            ax.barh([n - 1 - k - (i - (len(answers) - 1) / 2) * height for k in range(n)], probs, height=height,
                    label=name)
        ax.set_yticks([n - 1 - k for k in range(n)], self.classes)
        ax.set_xlim(0, 1)
        ax.set_xlabel("P(class | text)", fontsize=13)
        ax.tick_params(labelsize=12)
        ax.legend(fontsize=11, loc="lower right")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=72)
        self.chart.value = buffer.getvalue()
        self.info.value = "; ".join(f"<b>{name}</b> {timing}" for name, (_, timing) in answers.items())
