"""ipywidgets panels for trying models live. Each answers within a second for the small models.

Introduced in notebooks/01_ngram_language_models.ipynb.
"""

from __future__ import annotations

import html
import io
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, cast

import torch
from matplotlib.figure import Figure
from torch import nn

from lmlab.data.corpora import tokenize
from lmlab.inference.decode import CausalLM, make_step, stream, stream_speed
from lmlab.measure.plots import plain_log_ticks
from lmlab.measure.runtime import check_int
from lmlab.measure.stats import Comparison, binomial_se, compare
from lmlab.measure.timing import Stopwatch, Timing, time_ms
from lmlab.models.lm import LanguageModel, make_context
from lmlab.models.neural import GPTLanguageModel
from lmlab.train.descent import check_lr, descend, draw_contours, squared_error

if TYPE_CHECKING:
    from lmlab.compress.methods import Method
    from lmlab.tasks.classify import TextClassifier

LIVE = ("It is a live widget: it appears and answers once this cell runs in a running kernel "
        "(`make lab`, then run the notebook's cells).")


@cache
def _panel_box_class():
    """A VBox whose plain-text form says what the panel is (shown wherever widgets cannot render)."""
    import ipywidgets as widgets

    class PanelBox(widgets.VBox):
        summary = ""

        def _repr_mimebundle_(self, **kwargs):
            bundle = super()._repr_mimebundle_(**kwargs)
            bundle["text/plain"] = self.summary
            return bundle

    return PanelBox


def panel_box(children: Sequence, summary: str):
    """Return a VBox of ``children`` whose text/plain form is ``summary`` followed by how to use it live.

    A notebook saved without widget state, or opened untrusted, shows this text instead of
    ``VBox(children=(...``."""
    box = _panel_box_class()(list(children))
    box.summary = f"{summary} {LIVE}"
    return box


def show_figure(chart, fig: Figure, dpi: int = 72) -> None:
    """Draw ``fig`` as a PNG into the Image widget ``chart``, displayed at its own pixel size (never stretched
    to the page's width; narrower only where the page is narrower than the figure)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    width = round(fig.get_size_inches()[0] * dpi)
    chart.value = buffer.getvalue()
    chart.layout.width, chart.layout.max_width, chart.layout.height = f"{width}px", "100%", "auto"


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
        self.widget = panel_box([widgets.HBox([self.text, self.choice]), self.info, self.chart],
                                "NextTokenPanel: type a context and pick a model to see its most likely next tokens.")
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
        show_figure(self.chart, fig, dpi=80)
        note = f" Not in the vocabulary, read as &lt;unk&gt;: {', '.join(unknown)}." if unknown else ""
        self.info.value = f"<b>{self.choice.value}</b> computed this in {timing}.{note}"


class DescentPanel:
    """Sliders for the learning rate and batch size of gradient descent on y ≈ w·x + b; redraws the path.

    The loss surface's contours carry a colour bar in J itself; the star marks ``true_line`` (w, b), by default the
    line ``lmlab.train.descent.linear_data`` draws its points around.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, lr: float = 0.1, batch_size: int = 16, steps: int = 60,
                 true_line: tuple[float, float] = (2.0, 1.0)):
        import ipywidgets as widgets

        check_lr(lr)
        self.x, self.y, self.steps, self.true_line = x, y, steps, true_line
        self.lr = widgets.FloatLogSlider(value=lr, base=10, min=-3, max=0.3, step=0.05, description="learning rate",
                                         readout_format=".3f", style={"description_width": "initial"})
        self.batch = widgets.IntSlider(value=batch_size, min=1, max=len(x), description="batch size",
                                       style={"description_width": "initial"})
        self.chart = widgets.Image(format="png")
        self.info = widgets.HTML()
        self.widget = panel_box([widgets.HBox([self.lr, self.batch]), self.info, self.chart],
                                "DescentPanel: sliders for the learning rate and batch size of gradient descent; "
                                "it redraws the path on the loss surface.")
        self.lr.observe(lambda _: self.refresh(), names="value")
        self.batch.observe(lambda _: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        path = descend(self.x, self.y, lr=self.lr.value, steps=self.steps, batch_size=self.batch.value, seed=0)
        losses = [float(squared_error(w, b, self.x, self.y)) for w, b in path]
        fig = Figure(figsize=(11, 4.2))
        left, right = fig.subplots(1, 2)
        draw_contours(left, self.x, self.y, "path on the loss surface", true_line=self.true_line, colorbar=True)
        ws, bs = zip(*path)
        left.plot(ws, bs, "o-", color="tab:red", ms=3)
        left.set(xlim=(-3, 5), ylim=(-2, 4))
        right.semilogy(losses, color="tab:red")
        right.set_xlabel("step", fontsize=14)
        right.set_ylabel("J(w, b), log scale", fontsize=14)
        right.set_title("loss", fontsize=14)
        right.tick_params(labelsize=12)
        plain_log_ticks(right.yaxis)
        fig.tight_layout()
        show_figure(self.chart, fig)
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
    Every setting tried is kept as a point, so the plot builds up accuracy against the setting. Each point's bar is
    the interval of its difference from the uncompressed accuracy, drawn around the point, so a bar that crosses the
    dashed line is exactly a difference within noise (``lmlab.measure.stats.compare``): paired over documents where
    the evaluation also returns ``"documents"`` (per-document "correct" and "tokens" arrays, as
    ``lmlab.models.scoring.document_scores`` gives them), else ±2 SE of the difference from the prediction count
    ("tokens"); no bar where neither is reported. A method that cannot apply to the chosen model
    (``Method.refuses``) is not offered for it; a setting the method refuses (a ValueError) is shown as the error's
    message, with no chart.
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
        self.widget = panel_box([self.controls, self.info, self.chart],
                                "CompressionPanel: pick a model, a compression method and its setting; it compresses "
                                "a copy, scores it and plots accuracy against the setting.")
        self.reference: dict[str, dict] = {}
        self.tried: dict[tuple[str, str], dict[float, float]] = {}
        self.model_choice.observe(lambda _: self._offer(), names="value")
        self._offering = False  # True while _offer changes the method menu: it redraws once itself
        self.method_choice.observe(lambda _: None if self._offering else self._switch(), names="value")
        for slider in self.sliders.values():
            slider.observe(lambda _: self.refresh(), names="value")
        self.hidden: dict[str, str] = {}
        self.intervals: dict[tuple[str, str, float], Comparison | None] = {}
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
        """Compress and score the chosen setting; while that runs, the info line says so and the controls wait."""
        model_name, method_name = self.model_choice.value, self.method_choice.value
        value = self.sliders[method_name].value
        controls = (self.model_choice, self.method_choice, *self.sliders.values())
        self.info.value = f"<i>compressing {html.escape(model_name)} ({html.escape(method_name)} at {value:g}) " \
                          "and scoring it…</i>"
        for control in controls:
            control.disabled = True
        try:
            self._redraw(model_name, method_name, value)
        finally:
            for control in controls:
                control.disabled = False

    def _redraw(self, model_name: str, method_name: str, value: float) -> None:
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
        reference = self.reference[model_name]
        versus = accuracy_versus(result, reference)
        points = self.tried.setdefault((model_name, method_name), {})
        points[value] = result["accuracy"]
        self.intervals[model_name, method_name, value] = versus
        fig = Figure(figsize=(10, 5))
        ax = fig.subplots()
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], "o-", color="tab:blue", ms=7, label="settings tried")
        ax.plot([value], [result["accuracy"]], "o", color="tab:red", ms=11, label="this setting")
        ax.axhline(reference["accuracy"], color="black", ls="--", lw=1.2, label="uncompressed")
        bars = [(x, c) for x in xs if (c := self.intervals[model_name, method_name, x]) is not None]
        if bars:
            lows = [points[x] - (reference["accuracy"] + c.low) for x, c in bars]
            highs = [reference["accuracy"] + c.high - points[x] for x, c in bars]
            ax.errorbar([x for x, _ in bars], [points[x] for x, _ in bars], yerr=[lows, highs], fmt="none",
                        ecolor="tab:blue", capsize=4, label=f"difference from uncompressed, {bars[0][1].how}:\n"
                                                             "a bar crossing the dashed line is within noise")
        if self.methods[method_name].log:
            ax.set_xscale("log")
        if self.methods[method_name].integer:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(self.methods[method_name].label, fontsize=13)
        ax.set_ylabel("validation accuracy", fontsize=13)
        ax.set_title(f"{model_name}: {method_name}", fontsize=13)
        ax.tick_params(labelsize=12)
        ax.legend(fontsize=11, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # under the axes, off the data
        fig.tight_layout()
        show_figure(self.chart, fig)
        verdict = "" if versus is None else f"; {versus.verdict} by {versus.how}"
        hidden = "".join(f"; not offered here: {name} ({why})" for name, why in self.hidden.items())
        self.info.value = (f"<b>{model_name}</b>, {method_name} at {value:g}: accuracy {result['accuracy']:.4f} "
                           f"(uncompressed {reference['accuracy']:.4f}{verdict}), "
                           f"perplexity {result['perplexity']:.2f} "
                           f"(uncompressed {reference['perplexity']:.2f}), {result['size_bytes'] / 1e6:.3f} MB; "
                           f"compressed and scored in {result['seconds'] * 1e3:.0f} ms{html.escape(hidden)}")


def accuracy_versus(result: Mapping, reference: Mapping) -> Comparison | None:
    """Compare a compressed model's accuracy with the uncompressed one's by the one noise rule: paired over
    documents where both carry ``"documents"`` (per-document "correct" and "tokens"), else ±2 SE of the difference
    from their prediction counts ("tokens"); None where neither is reported."""
    if "documents" in result and "documents" in reference:
        mine, theirs = result["documents"], reference["documents"]
        return compare(mine["correct"], theirs["correct"], theirs["tokens"])
    if "tokens" in result and "tokens" in reference:
        return compare(result["accuracy"], reference["accuracy"],
                       se=(binomial_se(result["accuracy"], int(result["tokens"])),
                           binomial_se(reference["accuracy"], int(reference["tokens"]))))
    return None


class DecodePanel:
    """Choose a model, a path (eager float32 or ONNX Runtime int8), the KV cache and a batch size: the panel
    streams a reply token by token and shows the time to first token and the tokens per second.

    ``models`` maps a name to an ``lmlab.inference.decode.CausalLM``. A batch repeats the prompt ``batch`` times (every
    row computes the same reply; the first row is streamed; the speed is the batch's). The button starts a run in
    the background: while it runs the info line says so, the button is disabled and further clicks are ignored.
    Making a path's step the first time (the int8 path exports and quantizes the model) is timed and reported
    apart from the first token. Introduced in notebooks/06_acceleration.ipynb.
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
        self.widget = panel_box([widgets.HBox([self.prompt, self.choice]),
                                 widgets.HBox([self.path, self.cache, self.batch, self.go]), self.reply, self.info],
                                "DecodePanel: type a prompt, choose a model, a path, the KV cache and a batch size, "
                                "and press generate to stream a reply with its time to first token and tokens/s.")
        self.busy = False
        self.worker: threading.Thread | None = None
        self.go.on_click(lambda _: self.start())

    def step_for(self, name: str, path: str):
        """Return (and keep) the step function of a model and path."""
        key = (name, path)
        if key not in self.steps:
            self.steps[key] = make_step(self.models[name], self.PATHS[path])
        return self.steps[key]

    def start(self) -> bool:
        """Start ``run`` in a background thread unless a run is going (then do nothing); return whether it started.

        The kernel stays free meanwhile, so a second click arrives at once and is dropped, not queued."""
        if self.busy:
            return False
        self.busy, self.go.disabled = True, True
        self.info.value = "<i>running…</i>"

        def work() -> None:
            try:
                self.run()
            except Exception as err:  # shown in the panel: a thread's exception is otherwise lost
                self.info.value = f"The run failed: {html.escape(type(err).__name__)}: {html.escape(str(err))}"
            finally:
                self.busy, self.go.disabled = False, False

        self.worker = threading.Thread(target=work, daemon=True)
        self.worker.start()
        return True

    def refusal(self, name: str, prompt: str) -> str:
        """Return why the panel cannot decode ``prompt`` with model ``name``, in plain words ("" if it can)."""
        if not prompt.strip():
            return "The prompt is empty: type a few words first."
        lm = self.models[name]
        tokens = len(lm.encode(prompt))
        over = tokens + self.max_new_tokens - lm.window
        if over > 0:
            return (f"The prompt is {tokens} tokens; {name} reads at most {lm.window} positions and this panel adds "
                    f"{self.max_new_tokens} new tokens: shorten the prompt by {over} tokens.")
        return ""

    def run(self) -> dict:
        """Generate for the current settings, streaming the reply into the panel; return the figures shown."""
        name, path, batch, prompt = self.choice.value, self.path.value, self.batch.value, self.prompt.value
        self.go.disabled = True
        self.info.value = f"<i>running: {html.escape(name)}, {path}, batch {batch}…</i>"
        try:
            return self._decode(name, path, batch, prompt)
        finally:
            if not self.busy:  # a run that start() began: its thread re-enables the button when it ends
                self.go.disabled = False

    def _decode(self, name: str, path: str, batch: int, prompt: str) -> dict:
        refused = self.refusal(name, prompt)
        if refused:
            self.reply.value, self.info.value = "", html.escape(refused)
            return {"error": refused}
        made, making_s = "", 0.0
        if (name, path) not in self.steps and self.PATHS[path] != "eager":
            self.info.value = f"<i>making the {path} model of {html.escape(name)} (once)…</i>"
            with Stopwatch() as making:
                self.step_for(name, path)
            making_s = making.ms / 1e3
            made = f" (making the {path} model took {making_s:.1f} s, once, before this run)"
        shown, pieces = "", []
        for piece in stream(self.models[name], prompt, self.max_new_tokens, cache=self.cache.value,
                            step=self.step_for(name, path), batch=batch):
            pieces.append(piece)
            shown += piece.text
            self.reply.value = reply_html(prompt, shown)
        ttft_ms, rate = stream_speed(pieces)
        unknown = unknown_words(self.models[name], prompt)
        note = (f" Not in {html.escape(name)}'s vocabulary, read as &lt;unk&gt;: {html.escape(', '.join(unknown))}."
                if unknown else "")
        self.info.value = (f"<b>{html.escape(name)}</b>, {path}, cache {'on' if self.cache.value else 'off'}, "
                           f"batch {batch}: first token after {ttft_ms:.0f} ms, then {rate:.1f} tokens/s{made}.{note}")
        return {"ttft_ms": ttft_ms, "tokens_per_s": rate, "unknown": unknown, "making_s": making_s}


def reply_html(prompt: str, reply: str) -> str:
    """The prompt in bold, then the reply, with the newlines and spaces of both kept (CSS pre-wrap)."""
    return f'<div style="white-space: pre-wrap"><b>{html.escape(prompt)}</b>{html.escape(reply)}</div>'


def unknown_words(lm: CausalLM, text: str) -> list[str]:
    """The tokens of ``text`` that a word- or character-level lmlab GPT reads as <unk> (each once, in order);
    [] for a sub-word model, which has no unknown words."""
    if lm.level is None:
        return []
    vocab = cast(GPTLanguageModel, lm.source).vocab
    return list(dict.fromkeys(t for t in tokenize(text, lm.level) if t not in vocab))


class ClassifyPanel:
    """Type a text, see every classifier's probability for each class, and how long each took to answer.

    Introduced in notebooks/09_recurrent_vectors_classifiers.ipynb. ``classifiers`` maps a name to a fitted
    ``lmlab.tasks.classify.TextClassifier``; all must share one set of classes. The info line names the words a
    classifier does not know (it reads them as unknown) and says when a classifier cuts the text at its
    ``max_length``. An empty text is refused in plain words, with no chart.
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
        self.widget = panel_box([self.text, self.info, self.chart],
                                "ClassifyPanel: type a text to see each classifier's probability for every class.")
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

    def notes(self, text: str) -> list[str]:
        """Plain sentences on what the classifiers could not read of ``text``: unknown words, a cut at max_length."""
        readings = {name: reading(clf, text) for name, clf in self.classifiers.items()}
        unit = "words" if next(iter(self.classifiers.values())).level == "word" else "characters"
        by_who: dict[tuple[str, ...], list[str]] = {}  # the unknown words, grouped by the classifiers they fool
        for word in dict.fromkeys(w for unknown, *_ in readings.values() for w in unknown):
            by_who.setdefault(tuple(n for n, (unknown, *_) in readings.items() if word in unknown), []).append(word)
        lines = [f"Not in the vocabulary of {'every classifier' if len(who) == len(readings) else _listed(who)}, "
                 f"read as unknown: {html.escape(', '.join(words))}." for who, words in by_who.items()]
        blind = [name for name, (_, total, _, known) in readings.items() if total and not known]
        if blind:
            lines.append(f"{_listed(blind)} know{'s' if len(blind) == 1 else ''} none of these {unit}: "
                         f"{'its' if len(blind) == 1 else 'their'} answer is the same for any such text.")
        cut: dict[tuple[int, int], list[str]] = {}
        for name, (_, total, kept, _) in readings.items():
            if kept < total:
                cut.setdefault((kept, total), []).append(name)
        for (kept, total), names in cut.items():
            lines.append(f"{_listed(names)} read{'s' if len(names) == 1 else ''} only the first {kept} of these "
                         f"{total} {unit}; the rest is cut.")
        return lines

    def refresh(self) -> None:
        if not self.text.value.strip():
            self.chart.value = b""  # no chart of an earlier text under this message
            self.info.value = "Nothing to classify: the text is empty. Type a few words."
            return
        try:
            answers = self.predict(self.text.value)
        except ValueError as err:  # the library's message names the argument; the panel says it in words
            self.chart.value = b""
            self.info.value = f"The classifiers cannot read this text ({html.escape(str(err))})."
            return
        show_figure(self.chart, class_chart(answers, self.classes))
        timings = "; ".join(f"<b>{html.escape(name)}</b> {timing}" for name, (_, timing) in answers.items())
        self.info.value = "<br>".join([timings, *self.notes(self.text.value)])


def _listed(names: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c" (HTML-escaped)."""
    names = [html.escape(n) for n in names]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def reading(clf: TextClassifier, text: str) -> tuple[list[str], int, int, int]:
    """What ``clf`` makes of ``text``: its unknown tokens (each once, in order), how many tokens the text has, how
    many the classifier reads (all for the bag of n-grams; at most ``max_length`` for the others), and how many of
    those it knows."""
    from lmlab.tasks.classify import NgramLinear, text_tokens

    tokens = text_tokens(text, clf.level)
    kept = len(tokens) if isinstance(clf, NgramLinear) else min(len(tokens), clf.max_length)
    unknown = list(dict.fromkeys(t for t in tokens if t not in clf.vocab))
    return unknown, len(tokens), kept, sum(t in clf.vocab for t in tokens[:kept])


def class_chart(answers: Mapping[str, tuple[list[float], Timing]], classes: Sequence[str]) -> Figure:
    """Horizontal bars of P(class | text), one group per class (the first on top), one bar per classifier, with
    the legend beside the axes; sized so that the PNG at 72 dpi fits a laptop screen."""
    n, k = len(classes), len(answers)
    fig = Figure(figsize=(9, min(1.2 + 0.16 * n * k + 0.1 * n, 6.5)))
    ax = fig.subplots()
    height = 0.8 / k
    for i, (name, (probs, _)) in enumerate(answers.items()):
        ax.barh([n - 1 - c - (i - (k - 1) / 2) * height for c in range(n)], probs, height=height, label=name)
    ax.set_yticks([n - 1 - c for c in range(n)], list(classes))
    ax.set_ylim(-0.5, n - 0.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("P(class | text)", fontsize=13)
    ax.tick_params(labelsize=12)
    ax.legend(fontsize=11, loc="upper left", bbox_to_anchor=(1.01, 1))  # in the bars' order, top first
    fig.tight_layout()
    return fig
