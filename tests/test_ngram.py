import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from lmlab.data.corpora import Corpus, Vocab, tokenize_corpus
from lmlab.inference.sampling import sample
from lmlab.models.lm import evaluate, sequence_logprob, top_k
from lmlab.models.ngram import NGramModel


@pytest.fixture(scope="module")
def verses(kjv_corpus):
    return tokenize_corpus(Corpus("kjv-slice", "word", kjv_corpus.documents[:1500]), min_count=2)


def random_contexts(data, n, rows=40, seed=0):
    """Seen contexts from the validation split, plus random (mostly unseen) ones and some with <unk>."""
    seen, _ = data.examples("valid", n - 1)
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, len(data.vocab), size=(rows, n - 1))
    noise[: rows // 4, :] = data.vocab.unk_id if n > 1 else noise[: rows // 4, :]
    return np.concatenate([seen[:rows], noise])


@pytest.mark.parametrize("smoothing", ["add-k", "kneser-ney", "modified-kneser-ney"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_probabilities_sum_to_one(verses, n, smoothing):
    model = NGramModel.fit(verses, n=n, smoothing=smoothing, k=0.5)
    probs = model.next_token_logprobs(random_contexts(verses, n)).exp()
    assert probs.dtype == torch.float64
    assert torch.allclose(probs.sum(-1), torch.ones(len(probs), dtype=torch.float64), rtol=0, atol=1e-9)
    words = np.arange(len(verses.vocab)) != verses.vocab.bos_id
    assert (probs[:, words] > 0).all()  # every token but <s>, which is never predicted (Kneser-Ney: P = 0)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_maximum_likelihood_sums_to_one_for_seen_contexts_and_shows_zeros(verses, n):
    model = NGramModel.fit(verses, n=n, smoothing="none")
    seen, _ = verses.examples("train", n - 1)
    probs = model.next_token_logprobs(seen[:50]).exp()
    assert torch.allclose(probs.sum(-1), torch.ones(50, dtype=torch.float64), rtol=0, atol=1e-9)
    if n > 1:
        assert (probs == 0).any()  # zero probabilities are shown honestly
        unseen = np.full((1, n - 1), verses.vocab.unk_id)
        unseen[0, -1] = verses.vocab.eos_id  # </s> never precedes a token inside a document
        assert torch.isneginf(model.next_token_logprobs(unseen)).all()


def test_maximum_likelihood_is_count_ratio(verses):
    model = NGramModel.fit(verses, n=2, smoothing="none")
    contexts, targets = verses.examples("train", 1)
    the = verses.vocab.stoi["the"]
    after_the = targets[contexts[:, 0] == the]
    expected = Counter(after_the.tolist())
    probs = model.next_token_logprobs(np.array([[the]])).exp()[0]
    for word, count in list(expected.items())[:20]:
        assert probs[word].item() == pytest.approx(count / len(after_the), rel=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_laplace_perplexity_equals_nltk(verses, n):
    from nltk.lm import Laplace, Vocabulary

    model = NGramModel.fit(verses, n=n, smoothing="add-k", k=1.0)
    itos = verses.vocab.itos

    def ngrams(split):
        contexts, targets = verses.examples(split, n - 1)
        return [tuple(itos[i] for i in row) + (itos[t],) for row, t in zip(contexts, targets)]

    vocabulary = Vocabulary(itos[1:], unk_cutoff=1, unk_label="<unk>")  # nltk adds its unk label itself
    assert len(vocabulary) == len(verses.vocab)
    reference = Laplace(n, vocabulary=vocabulary)
    reference.fit([ngrams("train")])
    held_out = ngrams("valid")[:400]
    contexts, targets = verses.examples("valid", n - 1)
    ours = model.perplexity(contexts[:400], targets[:400])
    assert ours == pytest.approx(reference.perplexity(held_out), rel=1e-6)


def kenlm_reference(sentences, vocab, n, discount=None):
    """A slow, dict-based Kneser-Ney written from KenLM's rules, from the sentences themselves.

    A sentence is <s> w1 .. wm </s>; an n-gram that starts with <s> keeps its raw count at every order, the others
    below the top take continuation counts; discount None estimates D1, D2, D3+ per order from counts-of-counts,
    a number gives one D for every count. The uniform base leaves out <s>.
    """
    bos, eos = vocab.bos_id, vocab.eos_id
    counts = [Counter() for _ in range(n)]  # counts[m - 1][gram of m tokens]
    for words in sentences:
        seq = [bos] + list(words) + [eos]
        for i in range(1, len(seq)):
            gram = tuple(seq[max(0, i - n + 1): i + 1])
            if len(gram) == n or gram[0] == bos:  # a full n-gram, or a shorter one starting at the sentence's <s>
                counts[len(gram) - 1][gram] += 1
    for m in range(n - 1, 0, -1):  # continuation counts for the lower orders, from every gram one order up
        for gram in counts[m]:
            counts[m - 1][gram[1:]] += 1
    discounts = []
    for m in range(n):
        if discount is not None:
            discounts.append((discount,) * 3)
            continue
        t = Counter(counts[m].values())
        y = t[1] / (t[1] + 2 * t[2])
        discounts.append(tuple(k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3)))
    followers = [defaultdict(dict) for _ in range(n)]
    for m in range(n):
        for gram, c in counts[m].items():
            followers[m][gram[:-1]][gram[-1]] = c

    def prob(context, word):
        history = list(context)
        while len(history) > 1 and history[0] == bos and history[1] == bos:
            history.pop(0)  # the padding: a sentence starts from one <s>
        p = 0.0 if word == bos else 1.0 / (len(vocab) - 1)
        for m in range(n):
            if m > len(history):
                break
            h = tuple(history[len(history) - m:]) if m else ()
            seen = followers[m].get(h)
            if not seen:
                continue
            D = discounts[m]
            total = sum(seen.values())
            mass = sum(D[min(c, 3) - 1] for c in seen.values())
            c = seen.get(word, 0)
            p = (max(c - D[min(c, 3) - 1], 0) if c else 0.0) / total + mass / total * p
        return p

    return prob, discounts


@pytest.mark.parametrize("smoothing", ["kneser-ney", "modified-kneser-ney"])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_kneser_ney_equals_a_reference_written_from_kenlms_rules(verses, n, smoothing):
    model = NGramModel.fit(verses, n=n, smoothing=smoothing)
    single = 0.75 if smoothing == "kneser-ney" else None
    prob, discounts = kenlm_reference(verses.ids["train"], verses.vocab, n, single)
    np.testing.assert_allclose(model.discounts, discounts, rtol=1e-12)
    contexts, targets = verses.examples("valid", n - 1)
    contexts, targets = contexts[:600], targets[:600]  # the first verses, their first words included
    reference = np.log([prob(c, t) for c, t in zip(contexts.tolist(), targets.tolist())])
    np.testing.assert_allclose(model.logprob_of(contexts, targets), reference, rtol=1e-10)
    # And the dense path agrees with the per-target path.
    dense = model.next_token_logprobs(contexts).numpy()[np.arange(len(targets)), targets]
    np.testing.assert_allclose(dense, model.logprob_of(contexts, targets), rtol=1e-12)


def test_a_sentence_starts_from_one_bos_with_raw_counts(verses):
    model = NGramModel.fit(verses, n=3, smoothing="kneser-ney", discount=0.5)
    bos, starts = verses.vocab.bos_id, Counter(doc[0] for doc in verses.ids["train"] if len(doc))
    first, count = starts.most_common(1)[0]
    total, kinds = sum(starts.values()), len(starts)
    unigram = model.next_token_logprobs(np.array([[verses.vocab.unk_id, verses.vocab.eos_id]])).exp()[0, first]
    expected = (count - 0.5) / total + 0.5 * kinds / total * float(unigram)  # raw counts after <s>, then P(w)
    assert math.exp(model.logprob_of(np.array([[bos, bos]]), np.array([first]))[0]) == pytest.approx(expected)
    assert torch.isneginf(model.next_token_logprobs(np.array([[bos, bos]]))[0, bos])  # <s> is never predicted


def test_discounts_follow_chen_and_goodman():
    from lmlab.models.ngram import estimate_discounts

    counts = np.array([1] * 60 + [2] * 20 + [3] * 10 + [4] * 5 + [9] * 3)
    y = 60 / (60 + 2 * 20)
    (d1, d2, d3), ok = estimate_discounts(counts)
    assert ok and (d1, d2, d3) == pytest.approx((1 - 2 * y * 20 / 60, 2 - 3 * y * 10 / 20, 3 - 4 * y * 5 / 10))
    assert estimate_discounts(np.array([5, 6, 7])) == ((0.5, 1.0, 1.5), False)  # no singletons: KenLM's fallback


def test_answers_the_shared_questions(verses):
    model = NGramModel.fit(verses, n=3)
    contexts, targets = verses.examples("valid", 2)
    scores = evaluate(model, contexts, targets)
    assert scores["perplexity"] == pytest.approx(model.perplexity(contexts, targets), rel=1e-9)
    assert 0 < scores["accuracy"] < 1
    chain = sequence_logprob(model, ["and", "god", "said"])
    assert chain["bits"] == pytest.approx(chain["nats"] / math.log(2))
    assert math.exp(chain["nats"]) == pytest.approx(math.prod(p for _, p in chain["factors"]))
    best = top_k(model, [verses.vocab.stoi["and"], verses.vocab.stoi["god"]], k=3)
    assert best[0][0] == "said" and best[0][1] >= best[1][1] >= best[2][1]


def test_sampling_is_seeded(verses):
    model = NGramModel.fit(verses, n=3)
    assert sample(model, seed=7, max_tokens=25) == sample(model, seed=7, max_tokens=25)
    assert sample(model, seed=7, max_tokens=25) != sample(model, seed=8, max_tokens=25)


def test_unknown_tokens_get_probability(verses):
    model = NGramModel.fit(verses, n=2)
    out = sequence_logprob(model, ["and", "zebra"], strict=False)  # zebra -> <unk>
    assert out["factors"][1][0] == "<unk>" and out["factors"][1][1] > 0
    with pytest.raises(ValueError, match="'zebra' is not in the vocabulary"):
        sequence_logprob(model, ["and", "zebra"])


def test_tokens_never_seen_in_training_get_probability(verses):
    """A vocabulary token absent from the training text: Kneser-Ney and add-k still give it P > 0."""
    vocab = Vocab(verses.vocab.itos + ("zebra",))
    zebra = vocab.stoi["zebra"]
    contexts, targets = verses.examples("train", 2)
    probe = verses.examples("valid", 2)[0][:50]
    kn = NGramModel.from_examples(contexts, targets, vocab, n=3).next_token_logprobs(probe).exp()
    assert (kn[:, zebra] > 0).all() and torch.allclose(kn.sum(-1), torch.ones(50, dtype=torch.float64), atol=1e-9)
    laplace = NGramModel.from_examples(contexts, targets, vocab, n=3, smoothing="add-k")
    assert (laplace.next_token_logprobs(probe)[:, zebra] > -math.inf).all()
    mle = NGramModel.from_examples(contexts, targets, vocab, n=3, smoothing="none")
    assert torch.isneginf(mle.next_token_logprobs(probe)[:, zebra]).all()  # honest: never seen, P = 0


def test_torch_and_numpy_inputs_agree(verses):
    model = NGramModel.fit(verses, n=3)
    contexts, targets = verses.examples("valid", 2)
    torch.testing.assert_close(model.next_token_logprobs(torch.from_numpy(contexts[:20])),
                               model.next_token_logprobs(contexts[:20]), rtol=0, atol=0)
    np.testing.assert_array_equal(model.logprob_of(torch.from_numpy(contexts), torch.from_numpy(targets)),
                                  model.logprob_of(contexts, targets))


def test_size_grows_with_n(verses):
    sizes = [NGramModel.fit(verses, n=n) for n in (1, 2, 3)]
    assert sizes[0].num_ngrams() < sizes[1].num_ngrams() < sizes[2].num_ngrams()
    assert 0 < sizes[0].size_bytes() < sizes[1].size_bytes() < sizes[2].size_bytes()
    assert sizes[0].num_ngrams() <= len(verses.vocab)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n=0"), ({"n": 2.5}, "n=2.5"), ({"n": 2, "smoothing": "witten-bell"}, "smoothing="),
    ({"n": 2, "smoothing": "add-k", "k": 0}, "k=0"), ({"n": 2, "smoothing": "add-k", "k": -1.0}, "k=-1.0"),
    ({"n": 2, "smoothing": "add-k", "k": math.inf}, "k=inf"), ({"n": 2, "smoothing": "add-k", "k": "1"}, "k='1'"),
    ({"n": 2, "smoothing": "kneser-ney", "discount": 0.0}, "discount=0.0"),
    ({"n": 2, "smoothing": "kneser-ney", "discount": 1.0}, "discount=1.0"),
    ({"n": 2, "discount": 0.5}, r"discount=0.5 is out of range; modified Kneser-Ney takes None"),
    ({"n": 2, "discount": (0.5, 2.5, 1.0)}, r"0 < D2 < 2"),
])
def test_bad_settings_are_clear_errors(verses, kwargs, match):
    with pytest.raises(ValueError, match=match):
        NGramModel.fit(verses, **kwargs)


def test_empty_corpus_is_a_clear_error(verses):
    with pytest.raises(ValueError, match="empty"):
        NGramModel.from_examples(np.zeros((0, 1), np.int64), np.zeros(0, np.int64), verses.vocab, n=2)


def test_ids_outside_the_vocabulary_are_clear_errors(verses):
    V = len(verses.vocab)
    with pytest.raises(ValueError, match=f"targets holds token id {V}"):
        NGramModel.from_examples(np.zeros((2, 1), np.int64), np.array([3, V]), verses.vocab, n=2)
    with pytest.raises(ValueError, match="contexts holds token id -1"):
        NGramModel.from_examples(np.array([[3], [-1]]), np.array([3, 4]), verses.vocab, n=2)
    model = NGramModel.fit(verses, n=2)
    with pytest.raises(ValueError, match=f"targets holds token id {V}"):
        model.logprob_of(np.zeros((2, 1), np.int64), np.array([3, V]))
    with pytest.raises(ValueError, match=r"targets has shape \(3,\)"):
        model.perplexity(np.zeros((2, 1), np.int64), np.array([3, 4, 5]))
    with pytest.raises(ValueError, match="outside"):
        model.next_token_logprobs(np.array([[V]]))


def test_context_of_the_wrong_length_is_a_clear_error(verses):
    model = NGramModel.fit(verses, n=3)
    with pytest.raises(ValueError, match=r"needs \(batch, 2\)"):
        model.next_token_logprobs(np.zeros((1, 3), np.int64))
    with pytest.raises(ValueError, match="n=3 needs"):
        NGramModel.from_examples(np.zeros((4, 1), np.int64), np.zeros(4, np.int64), verses.vocab, n=3)


@pytest.mark.parametrize("n", [2, 3])
def test_arpa_file_read_by_kenlm_reproduces_the_model(verses, tmp_path, n):
    kenlm = pytest.importorskip("kenlm")
    model = NGramModel.fit(verses, n=n)
    model.to_arpa(tmp_path / "model.arpa")
    reader = kenlm.Model(str(tmp_path / "model.arpa"))
    contexts, targets = verses.examples("valid", n - 1)
    itos, state, out = verses.vocab.itos, kenlm.State(), kenlm.State()
    theirs = []
    for row, target in zip(contexts[:300].tolist(), targets[:300].tolist()):
        reader.NullContextWrite(state)
        for token in row:
            reader.BaseScore(state, itos[token], out)
            state, out = out, state
        theirs.append(reader.BaseScore(state, itos[target], out))
    ours = model.logprob_of(contexts[:300], targets[:300]) / math.log(10)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)  # ARPA stores 7 decimals


def test_only_kneser_ney_writes_arpa(verses, tmp_path):
    with pytest.raises(ValueError, match="only a kneser-ney model"):
        NGramModel.fit(verses, n=2, smoothing="add-k").to_arpa(tmp_path / "x.arpa")
    assert not (tmp_path / "x.arpa").exists()


def test_arpa_never_overwrites_a_file_unless_asked(verses, tmp_path):
    path = tmp_path / "mine.arpa"
    path.write_text("my notes")
    model = NGramModel.fit(verses, n=2)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.to_arpa(path)
    assert path.read_text() == "my notes"
    assert model.to_arpa(path, overwrite=True) == path
    text = path.read_text()
    assert text.startswith("\n\\data\\\nngram 1=") and text.rstrip().endswith("\\end\\")
    assert f"ngram 1={len(verses.vocab)}" in text and [p.name for p in tmp_path.iterdir()] == ["mine.arpa"]


def test_measure_ngrams_gives_one_row_per_order(names_data):
    from lmlab.models.ngram import measure_ngrams

    rows = measure_ngrams(names_data, orders=(1, 2), accuracy_tokens=500, repeat=3)
    assert [r.name for r in rows] == ["1-gram", "2-gram"]
    assert rows[1].perplexity < rows[0].perplexity and rows[1].accuracy > rows[0].accuracy
    assert rows[1].params > rows[0].params and rows[0].size_mb > 0 and rows[0].corpus == "names"


def test_measure_ngrams_times_contexts_without_padding(names_data, monkeypatch):
    import lmlab.models.ngram as ngram

    timed = {}  # order -> the contexts measure() times (its first batch_size rows)

    def spy(model, contexts, targets, **kwargs):
        timed[model.n] = contexts[:kwargs.get("batch_size", 1)]
        return real(model, contexts, targets, **kwargs)

    real = ngram.measure
    monkeypatch.setattr(ngram, "measure", spy)
    ngram.measure_ngrams(names_data, orders=(2, 3, 4), accuracy_tokens=200, repeat=2)
    bos = names_data.vocab.bos_id
    for n, contexts in timed.items():
        first = names_data.examples("test", n - 1)[0][:1]
        assert contexts.shape == (1, n - 1) and not (contexts == bos).any(), f"order {n} timed <s> padding"
        assert not np.array_equal(contexts, first)  # the first test context is all <s>


def test_measure_ngrams_scores_on_a_given_slice(names_data):
    from lmlab.models.lm import evaluate
    from lmlab.models.ngram import measure_ngrams

    slice_ = names_data.head("test", 200)
    row, = measure_ngrams(names_data, orders=(3,), evaluation=slice_, repeat=3, technique="n-gram (chapter 01)")
    model = NGramModel.fit(names_data, n=3)
    scores = evaluate(model, *slice_.examples("test", 2))
    assert row.accuracy == pytest.approx(scores["accuracy"]) and row.perplexity == pytest.approx(scores["perplexity"])
    assert row.technique == "n-gram (chapter 01)"


def test_measure_ngrams_names_the_slice_it_scored(names_data):
    from lmlab.models.ngram import measure_ngrams

    row, = measure_ngrams(names_data, orders=(2,), evaluation=names_data.head("test", 50), corpus="names test[:50]",
                          accuracy_tokens=200, repeat=2)
    assert row.corpus == "names test[:50]"
