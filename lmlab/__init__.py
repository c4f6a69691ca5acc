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
"""

__version__ = "0.1.0"
