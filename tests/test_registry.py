"""The one model registry: every shipped checkpoint, the n-grams and SmolLM2, each entry agreeing with its model."""

import dataclasses
import json
from pathlib import Path

import pytest

from lmlab.data.shipped import DATA_DIR
from lmlab.models.registry import KINDS, LEVELS, REGISTRY, load_model, model_entry, names

LEVEL_OF_CORPUS = {"kjv": "word", "names": "character"}  # how lmlab tokenizes each shipped corpus


def test_every_shipped_checkpoint_has_an_entry_that_agrees_with_its_card():
    shipped = sorted(p.stem for p in Path(DATA_DIR).glob("*.safetensors"))
    assert shipped and set(shipped) <= set(REGISTRY)
    for name in shipped:
        card = json.loads((Path(DATA_DIR) / f"{name}.json").read_text())
        entry, config = REGISTRY[name], card["config"]
        assert entry.kind == config["kind"] and entry.corpus == card["corpus"], name
        assert entry.window == config.get("n_positions", config.get("context_size")), name
        assert entry.level == LEVEL_OF_CORPUS[card["corpus"]], name


def test_an_ngram_entry_loads_the_ngram_of_its_window():
    model, data = load_model("ngram-3")
    entry = model_entry("ngram-3")
    assert model.n == entry.window + 1 == 3 and model.context_size == entry.window
    assert data.corpus.name == entry.corpus and data.vocab is load_model("gpt-small")[1].vocab


def test_smollm2_loads_with_its_tokenizer_and_window():
    model, tokenizer = load_model("smollm2")
    entry = model_entry("smollm2")
    assert entry.kind == "llm" and entry.level == "subword" and entry.corpus is None
    assert entry.window == model.config.max_position_embeddings
    assert tokenizer("and god said").input_ids  # a tokenizer, not a corpus


def test_names_by_kind_cover_the_registry_in_its_order():
    assert names("gpt") == ("gpt-small", "gpt-medium", "gpt-large")
    assert names("llm") == ("smollm2",) and names("ngram") == ("ngram-3", "ngram-5")
    assert names(("rnn", "mlp")) == ("mlp-names", "lstm-names", "rnn-names", "lstm-kjv")  # registry order
    assert names() == tuple(REGISTRY) and sorted(sum((names(k) for k in KINDS), ())) == sorted(REGISTRY)
    assert all(e.kind in KINDS and e.level in LEVELS and e.window >= 1 for e in REGISTRY.values())
    with pytest.raises(ValueError, match=r"kind='cnn' is unknown; use one of \('ngram'"):
        names("cnn")


def test_unknown_or_unallowed_names_are_refused_listing_the_allowed_ones():
    with pytest.raises(ValueError, match=r"model='gpt-9' is not a shipped model; use one of \('mlp-names'.*'smollm2'"):
        load_model("gpt-9")
    with pytest.raises(ValueError, match=r"model='mlp-names' is not served; use one of \('smollm2', 'gpt-small'"):
        model_entry("mlp-names", names("llm") + names("gpt"), "is not served")
    assert model_entry("gpt-large", names("gpt")) is REGISTRY["gpt-large"]


def test_entries_are_frozen_and_only_mlp_and_gpt_are_compressible():
    with pytest.raises(dataclasses.FrozenInstanceError):
        REGISTRY["gpt-small"].window = 64
    assert [n for n, e in REGISTRY.items() if e.compressible] == ["mlp-names", "gpt-small", "gpt-medium", "gpt-large"]
