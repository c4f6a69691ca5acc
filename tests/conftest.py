"""Shared fixtures: the corpora load once per test session."""

import os

import matplotlib

matplotlib.use("Agg")  # tests draw figures without a screen

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `make test` runs unit tests on several workers: share the cores
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import pytest

from lmlab.data.corpora import load_kjv, load_names, tokenize_corpus


@pytest.fixture(scope="session")
def names_corpus():
    return load_names()


@pytest.fixture(scope="session")
def kjv_corpus():
    return load_kjv()


@pytest.fixture(scope="session")
def names_data(names_corpus):
    return tokenize_corpus(names_corpus)


@pytest.fixture(scope="session")
def names_gpt(names_data):
    """A small untrained GPT over the census-names letters: two blocks, width 32, four heads (seeded)."""
    import torch

    from lmlab.models.kinds import build_model

    torch.manual_seed(0)
    return build_model("gpt", names_data.vocab, n_layer=2, n_embd=32, n_head=4, n_positions=16).eval()


@pytest.fixture(scope="session")
def smol():
    """SmolLM2-135M-Instruct as a decodable CausalLM (from the local GGUF; offline), loaded once per worker."""
    from lmlab.inference.decode import as_causal_lm
    from lmlab.models.pretrained import load_smollm2

    model, tokenizer = load_smollm2()
    return as_causal_lm(model, tokenizer, name="SmolLM2-135M")
