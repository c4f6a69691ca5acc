"""Shared fixtures: the corpora load once per test session."""

import matplotlib

matplotlib.use("Agg")  # tests draw figures without a screen

import pytest

from lmlab.corpora import load_kjv, load_names, tokenize_corpus


@pytest.fixture(scope="session")
def names_corpus():
    return load_names()


@pytest.fixture(scope="session")
def kjv_corpus():
    return load_kjv()


@pytest.fixture(scope="session")
def names_data(names_corpus):
    return tokenize_corpus(names_corpus)
