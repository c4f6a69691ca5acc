"""Skip-gram word2vec by hand (lmlab.tasks.vectors): pairs, training, neighbours, analogies, agreement with gensim."""

import math

import numpy as np
import pytest
import torch

from lmlab.data.corpora import SPECIALS, Corpus, Vocab, load_kjv, tokenize_corpus
from lmlab.measure.runtime import torch_threads
from lmlab.tasks.vectors import (
    WordVectors,
    gensim_word2vec,
    keep_probability,
    neighbour_overlap,
    noise_table,
    skipgram_pairs,
    token_counts,
    train_word2vec,
)

SETTINGS = dict(dim=32, epochs=3, lr=0.025, batch_size=1024)


@pytest.fixture(scope="module")
def head():
    """The first 6000 KJV verses, split and encoded like the chapters' data (min_count=2)."""
    return tokenize_corpus(Corpus("kjv-head", "word", load_kjv().documents[:6000]), min_count=2)


@pytest.fixture(scope="module")
def trained(head):
    with torch_threads(1):
        return train_word2vec(head, **SETTINGS)


def toy(words, vectors):
    return WordVectors(np.asarray(vectors, dtype=np.float32), Vocab(SPECIALS + tuple(words)))


def test_pairs_lie_within_the_window_of_one_document():
    docs = [np.arange(3, 13), np.arange(20, 26)]  # distinct ids, so a pair's distance is the difference of its ids
    centres, contexts = skipgram_pairs(docs, window=3, subsample=0, seed=0)
    distance = np.abs(centres - contexts)
    assert len(centres) and distance.min() >= 1 and distance.max() <= 3
    assert not np.any((centres < 20) != (contexts < 20))  # never across documents
    # With subsampling off and window 1, every neighbour pair appears, both ways.
    centres, contexts = skipgram_pairs(docs, window=1, subsample=0, seed=5)
    assert len(centres) == 2 * (9 + 5)


def test_dynamic_window_pairs_near_words_more_often():
    docs = [np.arange(3, 2003)]
    centres, contexts = skipgram_pairs(docs, window=4, subsample=0, seed=0)
    share = np.bincount(np.abs(centres - contexts), minlength=5)[1:] / (2 * 2000)
    # A pair at distance d is kept when the centre's window b ~ U{1..4} reaches it: P = (4 - d + 1) / 4.
    assert np.allclose(share, [1, 0.75, 0.5, 0.25], atol=0.03)


def test_subsampling_is_seeded_and_drops_frequent_words(head):
    a, b = skipgram_pairs(head, 5, 1e-3, seed=1), skipgram_pairs(head, 5, 1e-3, seed=1)
    c = skipgram_pairs(head, 5, 1e-3, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    counts = token_counts(head)
    keep = keep_probability(counts, 1e-3)
    the = head.vocab.stoi["the"]
    assert keep[the] < 0.3 and keep[-1] == 1.0  # the commonest word is mostly dropped, a rare one always kept
    kept_share = np.mean(a[0] == the) / (counts[the] / counts.sum())
    assert kept_share < 0.5
    assert 0 not in a[0] and 0 not in a[1]  # <unk> is dropped


def test_noise_table_follows_the_three_quarter_power():
    counts = np.array([0, 0, 0, 16, 1, 81])
    table = noise_table(counts, size=100_000).numpy()
    share = np.bincount(table, minlength=6) / len(table)
    expected = counts ** 0.75 / (counts ** 0.75).sum()
    assert np.allclose(share, expected, atol=1e-3)


def test_loss_falls_and_training_is_deterministic(head, trained):
    curve = [loss for _, loss in trained.loss_curve]
    assert curve[-1] < curve[0] - 0.5
    assert trained.loss_curve[-1][0] == trained.settings["pairs"]
    assert trained.vectors.shape == (len(head.vocab), 32) and trained.train_seconds > 0
    with torch_threads(1):
        again = train_word2vec(head, **SETTINGS)
    assert np.array_equal(again.vectors, trained.vectors)


def test_sgd_steps_match_autograd():
    """The hand-written gradients of ℓ = −ln σ(u_c·v_w) − Σ ln σ(−u_k·v_w) agree with torch.autograd's: replay three
    SGD steps (u starts at zero, so v only moves from the second step on) from the same random draws."""
    data = tokenize_corpus(Corpus("tiny", "word", tuple(f"a b c d e f g h {i % 3}" for i in range(30))))
    w_np, c_np = skipgram_pairs(data, 5, 0, 0)
    batch = math.ceil(len(w_np) / 3)
    with torch_threads(1):
        trained = train_word2vec(data, dim=4, epochs=1, batch_size=batch, lr=0.5, subsample=0, chunks=3)
    generator = torch.Generator().manual_seed(0)
    v = (torch.rand(len(data.vocab), 4, generator=generator) - 0.5) / 4
    u = torch.zeros(len(data.vocab), 4)
    table = noise_table(token_counts(data))
    order = torch.randperm(len(w_np), generator=generator)
    pairs = torch.from_numpy(w_np)[order], torch.from_numpy(c_np)[order]
    for step, first in enumerate(range(0, len(w_np), batch)):
        w, c = (p[first:first + batch] for p in pairs)
        negatives = table[torch.randint(len(table), (len(w), 5), generator=generator)]
        v.requires_grad_(), u.requires_grad_()
        vw = v[w]
        loss = -(torch.nn.functional.logsigmoid((u[c] * vw).sum(1)).sum()
                 + torch.nn.functional.logsigmoid(-(u[negatives] * vw[:, None]).sum(2)).sum())
        loss.backward()
        assert math.isclose(trained.loss_curve[step][1], loss.item() / len(w), rel_tol=1e-5)
        alpha = 0.5 * (1 - step / 3)
        v, u = (v - alpha * v.grad).detach(), (u - alpha * u.grad).detach()
    assert step == 2
    assert torch.allclose(torch.from_numpy(trained.vectors), v, atol=1e-6)
    assert not torch.allclose(v, (torch.rand(len(data.vocab), 4, generator=torch.Generator().manual_seed(0)) - 0.5) / 4)


def test_neighbours_and_analogy_on_hand_made_vectors():
    words = ("a", "b", "c", "d", "e", "near_a")
    s = 1 / math.sqrt(3)
    vectors = np.zeros((len(SPECIALS) + len(words), 4))
    vectors[3:] = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [-s, s, s, 0], [0, 0, 0, 1], [0.9, 0.1, 0, 0]]
    vectors[:3] = [1, 0, 0, 0]  # specials pointing at "a" must never be answered
    wv = toy(words, vectors)
    best = wv.neighbours("a", 5)
    assert [w for w, _ in best] == ["near_a", "b", "c", "e", "d"]  # b, c, e tie at cosine 0: in vocabulary order
    assert [c for _, c in best] == pytest.approx([0.9 / math.hypot(0.9, 0.1), 0, 0, 0, -s], abs=1e-6)
    answer = wv.analogy("a", "b", "c", 1)  # b − a + c = (−1, 1, 1, 0) ∝ d
    assert answer[0][0] == "d" and answer[0][1] == pytest.approx(1.0, abs=1e-6)
    assert {w for w, _ in wv.analogy("a", "b", "c", 3)}.isdisjoint({"a", "b", "c"})
    assert wv.words == 6


@pytest.mark.parametrize("call, match", [
    (lambda wv: wv.neighbours("zebra"), "word='zebra'"),
    (lambda wv: wv.neighbours("<s>"), "word='<s>'"),
    (lambda wv: wv.neighbours("a", 0), "k=0"),
    (lambda wv: wv.neighbours("a", 3), "k=3"),
    (lambda wv: wv.analogy("a", "b", "zebra"), "c='zebra'"),
    (lambda wv: wv.analogy("a", "b", "c", 1), "k=1"),
    (lambda wv: neighbour_overlap(wv, wv, [], 1), "words is empty"),
    (lambda wv: neighbour_overlap(wv, toy("ab", np.eye(5)), ["a"], 1), "different vocabularies"),
])
def test_bad_questions_raise(call, match):
    wv = toy("abc", np.eye(6))
    with pytest.raises(ValueError, match=match):
        call(wv)


@pytest.mark.parametrize("setting, match", [
    ({"dim": 0}, "dim=0"), ({"window": 0}, "window=0"), ({"negatives": 0}, "negatives=0"), ({"epochs": 0}, "epochs=0"),
    ({"lr": -1.0}, "lr=-1.0"), ({"batch_size": 0}, "batch_size=0"), ({"subsample": 1.5}, "subsample=1.5"),
])
def test_bad_settings_raise(head, setting, match):
    with pytest.raises(ValueError, match=match):
        train_word2vec(head, **setting)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="no tokens"):
        skipgram_pairs([np.array([], dtype=np.int64)])
    with pytest.raises(ValueError, match="vectors has shape"):
        toy("ab", np.eye(4))
    with pytest.raises(ValueError, match="no GPT input embedding"):
        WordVectors.from_gpt(torch.nn.Linear(2, 2))


def test_overlap_with_gensim_is_far_above_chance(head, trained):
    """Same text, same settings: gensim's neighbours and ours share about half of each top 10 (measured 0.51 over
    the 200 commonest words, where gensim with itself across two seeds shares 0.58); chance is 0.003."""
    reference = gensim_word2vec(head, **{k: v for k, v in SETTINGS.items() if k != "batch_size"})
    again = gensim_word2vec(head, **{k: v for k, v in SETTINGS.items() if k != "batch_size"})
    assert np.array_equal(reference.vectors, again.vectors)  # the stable hash makes gensim repeatable
    top = list(head.vocab.itos[3:203])
    overlap = neighbour_overlap(trained, reference, top, 10)
    assert overlap.chance == pytest.approx(10 / (len(head.vocab) - 3 - 1))
    assert overlap.mean > 0.3 > 50 * overlap.chance
    assert set(overlap.per_word) == set(top)


def test_from_gpt_wraps_the_input_embedding():
    """A stand-in with a GPT's attribute path (building a real GPT imports transformers: seconds); chapter 09 loads
    the shipped one."""
    from types import SimpleNamespace

    vocab = Vocab(SPECIALS + tuple("abcdef"))
    weight = torch.nn.Parameter(torch.randn(len(vocab), 8))
    gpt = SimpleNamespace(gpt=SimpleNamespace(transformer=SimpleNamespace(wte=SimpleNamespace(weight=weight))),
                          vocab=vocab, card={"preset": "toy"})
    wv = WordVectors.from_gpt(gpt)
    assert wv.vocab is vocab and wv.settings["checkpoint"] == "toy"
    assert np.array_equal(wv.vectors, weight.detach().numpy())


def test_tables_and_pca_on_hand_made_vectors():
    from lmlab.tasks.vectors import analogy_table, loss_curve_plot, neighbour_table, pca_2d, pca_plot

    s = 1 / math.sqrt(3)
    wv = toy(("a", "b", "c", "d", "e"), [[1, 0, 0, 0]] * 3 + [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                              [-s, s, s, 0], [0, 0, 0, 1]])
    table = neighbour_table({"toy": wv}, ["a", "e"], k=2)
    assert table.loc["a", "toy"] == "b, c" and table.loc["e", "toy"] == "a, b"
    answers = analogy_table({"toy": wv}, [("a", "b", "c", "d"), ("a", "b", "c", "e")], k=1)
    assert list(answers["toy hit"]) == ["yes", "no"] and answers.loc[0, "question"] == "a : b :: c : ?"
    with pytest.raises(ValueError, match="expected='zebra'"):
        analogy_table({"toy": wv}, [("a", "b", "c", "zebra")])
    with pytest.raises(ValueError, match="vector_sets is empty"):
        neighbour_table({}, ["a"])
    # Points on a line in 3-D: the first component keeps all the variance and recovers the spacing.
    xy, share = pca_2d(np.outer([-1.0, 0.0, 2.0, 3.0], [1.0, 2.0, 2.0]))
    assert share[0] == pytest.approx(1.0) and np.allclose(np.abs(np.diff(xy[:, 0])), [3, 6, 3])
    with pytest.raises(ValueError, match="at least 3 rows"):
        pca_2d(np.eye(2))
    assert len(pca_plot({"toy": wv}, {"one": ["a", "b"], "two": ["c", "d"]}).axes) == 1
    with pytest.raises(ValueError, match="no loss curve"):
        loss_curve_plot(wv)


def test_overlap_standard_error():
    from lmlab.tasks.vectors import Overlap

    o = Overlap(0.5, {"x": 0.4, "y": 0.6}, 0.01)
    assert o.se == pytest.approx(0.1)  # sample sd 0.1414 / sqrt(2)
    assert Overlap(0.5, {"x": 0.5}, 0.01).se == 0.0


def test_cooccurrence_counts_with_glove_weights():
    from lmlab.tasks.vectors import cooccurrence

    x = cooccurrence([np.array([3, 4, 0, 5]), np.array([4, 3])], window=2, vocab_size=6).toarray()
    # <unk> (0) is dropped, so 3 4 5 are adjacent: 3-4 at distance 1 (twice, two documents), 4-5 at 1, 3-5 at 2.
    expected = np.zeros((6, 6))
    expected[3, 4] = expected[4, 3] = 2.0
    expected[4, 5] = expected[5, 4] = 1.0
    expected[3, 5] = expected[5, 3] = 0.5
    assert np.array_equal(x, expected)


def test_glove_loss_matches_a_direct_loop():
    from lmlab.tasks.vectors import glove_loss

    rng = np.random.default_rng(0)
    counts = np.array([[0, 3, 250], [3, 1, 0], [250, 0, 40]], dtype=float)
    w, wt = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    b, bt = rng.normal(size=3), rng.normal(size=3)
    direct = 0.0
    for i in range(3):
        for j in range(3):
            if counts[i, j] > 0:
                f = min(1.0, (counts[i, j] / 100) ** 0.75)
                direct += f * (w[i] @ wt[j] + b[i] + bt[j] - math.log(counts[i, j])) ** 2
    tensors = [torch.tensor(a, requires_grad=True) for a in (w, wt, b, bt)]
    loss = glove_loss(*tensors, counts)
    assert loss.item() == pytest.approx(direct, rel=1e-12)
    loss.backward()
    assert tensors[0].grad is not None and tensors[0].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="must agree"):
        glove_loss(tensors[0], tensors[1][:2], tensors[2], tensors[3], counts)
    with pytest.raises(ValueError, match="negative"):
        glove_loss(*tensors, -counts)


def test_train_glove_lowers_the_loss_and_checks_its_arguments():
    from lmlab.data.corpora import Vocab
    from lmlab.tasks.vectors import train_glove

    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(12, 12)).astype(float)
    counts = counts + counts.T
    vocab = Vocab(("<unk>", "<s>", "</s>") + tuple(f"w{i}" for i in range(9)))
    glove = train_glove(counts, vocab, dim=4, steps=30, batch_size=50, lr=0.1, seed=0)
    assert glove.vectors.shape == (12, 4) and len(glove.loss_curve) == 30
    assert glove.settings["end_loss"] < glove.settings["start_loss"] and glove.settings["pairs"] == (counts > 0).sum()
    again = train_glove(counts, vocab, dim=4, steps=30, batch_size=50, lr=0.1, seed=0)
    assert np.array_equal(glove.vectors, again.vectors)  # seeded
    with pytest.raises(ValueError, match="counts has shape"):
        train_glove(counts[:5, :5], vocab)
    with pytest.raises(ValueError, match="lr=0"):
        train_glove(counts, vocab, lr=0)
