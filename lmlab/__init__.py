"""lmlab: the Millisecond LM Lab.

How a language model turns text into probabilities, and how that is made fast enough to answer in
milliseconds. The packages follow the course; each imports only the packages above it (import-linter checks it):

- ``lmlab.measure``    runtime (threads, devices, seeds), timing (``time_ms``), results (the one row), stats
  (standard errors, bootstrap, the one "within noise" rule), plots, hardware (bandwidth, FLOP/s, the decode floor)
- ``lmlab.data``       corpora (King James Bible, census names, your own text), shipped (files, the notebooks' slice)
- ``lmlab.models``     protocols (what a model answers: windows, documents), scoring (the one teacher-forced scorer),
  lm (evaluate, measure), ngram, neural (MLP, GPT), recurrent (RNN, LSTM), kinds, checkpoints, pretrained
  (SmolLM2-135M offline), registry (every model by name)
- ``lmlab.train``      descent (gradient descent by hand), loop (training, distillation, timed races), curves
- ``lmlab.compress``   quantize, quantize_study, prune (pruning, low rank, sharing), export (ONNX, real int8),
  fused (a fused decoder graph, its KV buffer allocated once), methods (every technique and its setting's
  range), experiment (one model, one method, one results row)
- ``lmlab.inference``  decode (prefill, decode, the KV cache, streaming), step (the typed decode step, left
  padding, positions, crop), sampling (SamplingParams, pick, sample), invariance (a row's tokens alone and in a
  batch), position_cost, speculative (draft and verify: greedy's tokens in fewer passes)
- ``lmlab.serving``    engine (continuous batching), kvcache (KV slots, prefix blocks), slots (the second-generation
  scheduler: chunked prefill, prefix caching, preemption), dense (the first), interference, served, protocol, app,
  launcher (the OpenAI-compatible HTTP server), clients, loadgen, reference, grounding (the assistant's accuracy on
  its FAQ, retrieval, grounded prompts)
- ``lmlab.scale``      group (the process group), scaling (a model of N ranks, checked on its measured points),
                      training (DDP, ZeRO, FSDP2 against one process), sharding (tensor-parallel weights read
                      slice by slice), pipeline (stages, micro-batches, the bubble, GPipe and 1F1B training),
                      distributed (torchrun: data, tensor, pipeline parallel), sweep (grids on Ray)
- ``lmlab.tasks``      classify (text classifiers), vectors (word2vec, GloVe's loss and a short fit)
- ``lmlab.notebook``   widgets (the interactive panels)
- ``lmlab.cli``        ``python -m lmlab COMMAND``
"""

import importlib.abc
import logging
import sys

__version__ = "0.1.0"

# torchao (installed for benchmarks/bench_int8.py) logs warnings whenever transformers imports it: kernels
# built for CUDA that a CPU machine cannot load, and pytree registrations torch calls deprecated. They are
# harmless, and would otherwise appear in every notebook's output.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

# Where each module of lmlab's first layout (one flat folder) lives now, so old imports fail with directions.
MOVED = {
    "runtime": "lmlab.measure.runtime", "bench": "lmlab.measure.timing", "results": "lmlab.measure.results",
    "plots": "lmlab.measure.plots", "hardware": "lmlab.measure.hardware", "corpora": "lmlab.data.corpora",
    "lm": "lmlab.models.lm", "ngram": "lmlab.models.ngram", "neural": "lmlab.models.neural",
    "recurrent": "lmlab.models.recurrent", "pretrained": "lmlab.models.pretrained",
    "checkpoints": "lmlab.models.checkpoints", "descent": "lmlab.train.descent", "curves": "lmlab.train.curves",
    "quantize": "lmlab.compress.quantize", "prune": "lmlab.compress.prune", "export": "lmlab.compress.export",
    "quantize_study": "lmlab.compress.quantize_study", "experiment": "lmlab.compress.experiment",
    "decode": "lmlab.inference.decode", "batching": "lmlab.serving.engine", "serve": "lmlab.serving.launcher",
    "loadgen": "lmlab.serving.loadgen", "reference": "lmlab.serving.reference",
    "sharding": "lmlab.scale.sharding",
    "distributed": "lmlab.scale.distributed", "sweep": "lmlab.scale.sweep", "classify": "lmlab.tasks.classify",
    "vectors": "lmlab.tasks.vectors", "widgets": "lmlab.notebook.widgets",
}


class _MovedModules(importlib.abc.MetaPathFinder):
    """Refuse ``import lmlab.decode`` and the like with a message naming the module's new place."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, leaf = fullname.partition("lmlab.")
        if not head and leaf in MOVED:
            package = MOVED[leaf].rsplit(".", 1)[0]
            raise ModuleNotFoundError(f"{fullname} moved to {MOVED[leaf]} when lmlab was arranged in packages; "
                                      f"import from {MOVED[leaf]} (or from {package})", name=fullname)
        return None


sys.meta_path.append(_MovedModules())
