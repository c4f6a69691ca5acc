"""lmlab's n-gram model against KenLM itself, word for word.

The reference files in data/kenlm/ were written by KenLM's own binaries (data/kenlm/make_reference.py, its command
in data/kenlm/README.md): ``lmplz -o 3`` on the training part of the first 3,000 King James verses, and ``query`` on
the test part, reading lmplz's ARPA file and the one lmlab writes. If ``$LMLAB_KENLM_BIN`` names a folder holding
KenLM's ``query``, one more test runs it on an ARPA file lmlab writes now.
"""

import json
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lmlab.data.corpora import Corpus, tokenize_corpus
from lmlab.models.ngram import NGramModel

KENLM = Path(__file__).resolve().parent.parent / "data" / "kenlm"


@pytest.fixture(scope="module")
def setting(kjv_corpus):
    """The reference's corpus (first 3,000 verses, every word kept), lmlab's 3-gram, and the test pairs."""
    data = tokenize_corpus(Corpus("kjv-3000", "word", kjv_corpus.documents[:3000]), min_count=1)
    model = NGramModel.fit(data, n=3, smoothing="modified-kneser-ney")
    contexts, targets = data.examples("test", 2)
    return data, model, contexts, targets


def kenlm_scores(name, data, targets):
    """KenLM's log10 P for every test word, checked to be the same words lmlab scores."""
    rows = [line.split("\t") for line in (KENLM / name).read_text().splitlines()]
    words = [data.vocab.itos[t] for t in targets]
    assert [w if w in data.vocab.stoi else "<unk>" for w, _ in rows] == words
    return np.array([float(logp) for _, logp in rows])


def test_discounts_equal_the_ones_lmplz_printed(setting):
    _, model, _, _ = setting
    printed = json.loads((KENLM / "lmplz-o3.discounts.json").read_text())
    np.testing.assert_allclose(model.discounts, [printed[str(order)] for order in (1, 2, 3)], atol=1e-4)


def test_modified_kneser_ney_reproduces_lmplz_on_every_test_word(setting):
    data, model, contexts, targets = setting
    theirs = kenlm_scores("query-lmplz.tsv", data, targets)
    ours = model.logprob_of(contexts, targets) / math.log(10)
    first = contexts[:, -1] == data.vocab.bos_id
    assert first.sum() > 200  # the first words of the verses are in the comparison
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)  # measured 2026-11-30: at most 6.8e-7
    assert 10 ** -ours.mean() == pytest.approx(10 ** -theirs.mean(), rel=1e-3)


def test_kenlm_reading_lmlabs_arpa_file_reproduces_lmlab(setting):
    data, model, contexts, targets = setting
    theirs = kenlm_scores("query-lmlab.tsv", data, targets)
    np.testing.assert_allclose(model.logprob_of(contexts, targets) / math.log(10), theirs, atol=1e-5, rtol=0)


def test_from_arpa_scores_lmplzs_file_as_kenlm_does(setting, tmp_path):
    data, _, contexts, targets = setting
    theirs = kenlm_scores("query-lmplz.tsv", data, targets)
    model = NGramModel.from_arpa(KENLM / "lmplz-o3.arpa.gz", vocab=data.vocab)
    np.testing.assert_allclose(model.logprob_of(contexts, targets) / math.log(10), theirs, atol=1e-5, rtol=0)
    own = NGramModel.from_arpa(KENLM / "lmplz-o3.arpa.gz")  # its own vocabulary, from the file
    assert len(own.vocab) == len(data.vocab) == 3238  # lmplz's unigrams: the training words, <unk>, <s>, </s>
    probs = model.next_token_logprobs(contexts[:20]).exp().sum(-1)  # first words of verses among them
    np.testing.assert_allclose(probs, 1.0, atol=1e-5)  # ARPA stores 7 decimals


def test_arpa_round_trip_through_from_arpa(setting, tmp_path):
    data, model, contexts, targets = setting
    path = model.to_arpa(tmp_path / "lmlab.arpa")
    again = NGramModel.from_arpa(path, vocab=data.vocab)
    np.testing.assert_allclose(again.logprob_of(contexts, targets), model.logprob_of(contexts, targets),
                               atol=1e-6 * math.log(10), rtol=0)


@pytest.mark.skipif(not os.environ.get("LMLAB_KENLM_BIN"), reason="set LMLAB_KENLM_BIN to KenLM's bin folder")
def test_kenlms_query_binary_on_a_file_lmlab_writes_now(setting, tmp_path):
    data, model, contexts, targets = setting
    path = model.to_arpa(tmp_path / "lmlab.arpa")
    out = subprocess.run([str(Path(os.environ["LMLAB_KENLM_BIN"]) / "query"), "-v", "word", str(path)],
                         input=data.normalized_text("test"), capture_output=True, text=True, check=True).stdout
    theirs = [float(x) for x in re.findall(r"\S+=\d+ \d+ (-?[\d.]+(?:e-?\d+)?)", out)]
    np.testing.assert_allclose(model.logprob_of(contexts, targets) / math.log(10), theirs, atol=1e-5, rtol=0)
