"""lmlab: the Millisecond LM Lab.

How a language model turns text into probabilities, and how that is made fast enough to answer in
milliseconds. One module per idea:

- ``lmlab.runtime``  threads, devices, seeds, the environment a timing ran on
- ``lmlab.bench``    ``time_ms``: warm-up, repeats, median and p90
- ``lmlab.corpora``  King James Bible, census names, your own text file; vocabularies and batches
- ``lmlab.lm``       the interface every language model answers, ``evaluate`` and ``measure``
- ``lmlab.ngram``    n-gram models: counts, smoothing, perplexity
- ``lmlab.results``  the one results row, tables, saving
- ``lmlab.plots``    the accuracy-against-milliseconds trade-off plot
- ``lmlab.neural``   neural language models (MLP, GPT-2), ``lmlab.checkpoints`` and ``lmlab.train``
- ``lmlab.pretrained`` SmolLM2-135M offline; ``lmlab.descent`` gradient descent by hand
- ``lmlab.quantize`` q(x) = round(x / Q) · Q, bit widths and granularity; ``lmlab.export`` real int8 (ONNX Runtime)
- ``lmlab.prune``    pruning, low rank, weight sharing; ``lmlab.widgets`` the interactive panels
- ``lmlab.decode``   prefill and decode, the KV cache, sampling, batches, streaming; ``lmlab.hardware`` the
  machine's bandwidth and FLOP/s, the decode floor and the roofline
- ``lmlab.classify`` text classifiers (names -> sex, verse -> testament or book group): four models, metrics
  from class labels, the transformer exported to ONNX step by step
"""

import logging

__version__ = "0.1.0"

# torchao (installed for benchmarks/bench_int8.py) logs warnings whenever transformers imports it: kernels
# built for CUDA that a CPU machine cannot load, and pytree registrations torch calls deprecated. They are
# harmless, and would otherwise appear in every notebook's output.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)
