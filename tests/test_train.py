"""The training loop, fine-tuning and distillation: seeded, recorded, and the distillation loss as written."""

import copy

import pytest
import torch
import torch.nn.functional as F

from lmlab.data.corpora import Corpus, tokenize_corpus
from lmlab.models.kinds import build_model
from lmlab.train.loop import compare_optimizers, distill, distillation_loss, fine_tune, train_model, training_data


@pytest.fixture(scope="module")
def verses(kjv_corpus):
    return tokenize_corpus(Corpus("kjv-slice", "word", kjv_corpus.documents[:400]), min_count=1)


def tiny_gpt(vocab, seed=0, width=16):
    torch.manual_seed(seed)
    return build_model("gpt", vocab, n_layer=1, n_embd=width, n_head=2, n_positions=64, dropout=0.0)


def run(verses, seed=0):
    model = tiny_gpt(verses.vocab)
    train_batches, evaluate_fn, _ = training_data(model, verses, batch_size=8, seed=seed, valid_documents=10)
    return train_model(model, train_batches, steps=12, lr=3e-3, evaluate_fn=evaluate_fn, eval_every=4,
                       seed=seed, progress=False)


def test_training_is_seeded_and_records_curves(verses):
    first, second = run(verses), run(verses)
    assert first.step == [4, 8, 12]
    assert first.valid_loss == second.valid_loss and first.train_loss == second.train_loss
    assert first.valid_loss[-1] < first.valid_loss[0]
    assert len(first.valid_accuracy) == len(first.elapsed_ms) == len(first.train_ms) == 3
    assert all(0 < t <= e for t, e in zip(first.train_ms, first.elapsed_ms))  # evaluations taken out
    assert first.train_ms == sorted(first.train_ms)


def test_mlp_training_data_gives_pairs(names_data):
    model = build_model("mlp", names_data.vocab, context_size=3, embed_dim=4, hidden_dim=8)
    train_batches, evaluate_fn, per_epoch = training_data(model, names_data, batch_size=512, valid_documents=50)
    contexts, targets = next(iter(train_batches(0)))
    assert contexts.shape == (512, 3) and targets.shape == (512,)
    assert per_epoch == -(-len(names_data.examples("train", 3)[1]) // 512)
    assert evaluate_fn(model)["tokens"] == len(names_data.head("valid", 50).examples("valid", 3)[1])


def test_distillation_loss_is_cross_entropy_plus_scaled_kl(verses):
    student, teacher = tiny_gpt(verses.vocab, seed=1), tiny_gpt(verses.vocab, seed=2, width=32)
    batch = next(iter(training_data(student, verses, batch_size=4)[0](0)))
    logits, targets = student.batch_logits(batch)
    teacher_logits, _ = teacher.batch_logits(batch)
    real = targets != -100
    T, alpha = 3.0, 0.25
    p_teacher = F.softmax(teacher_logits[real] / T, -1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(logits[real] / T, -1))).sum(-1).mean()
    expected = alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(logits[real], targets[real])
    torch.testing.assert_close(distillation_loss(teacher, T, alpha)(student, batch), expected)
    assert distillation_loss(teacher, 2.0, 0.0)(student, batch).item() == pytest.approx(student.loss(batch).item())
    assert distillation_loss(student, 2.0, 1.0)(student, batch).item() == pytest.approx(0.0, abs=1e-6)


def test_distill_and_fine_tune_train_in_place_and_validate_settings(verses):
    teacher = tiny_gpt(verses.vocab, seed=3, width=32)
    student = tiny_gpt(verses.vocab, seed=4)
    before = copy.deepcopy(student.state_dict())
    history = distill(student, teacher, verses, steps=6, batch_size=8, valid_documents=10)
    assert history.step == [6] and any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert fine_tune(student, verses, steps=4, batch_size=8, eval_every=2, valid_documents=10).step == [2, 4]
    with pytest.raises(ValueError, match="temperature=0"):
        distillation_loss(teacher, temperature=0)
    with pytest.raises(ValueError, match="alpha=1.5"):
        distillation_loss(teacher, alpha=1.5)
    with pytest.raises(ValueError, match="lr="):
        fine_tune(student, verses, steps=2, lr=0.0)
    with pytest.raises(ValueError, match="batch_size=0"):
        fine_tune(student, verses, steps=2, batch_size=0)
    with pytest.raises(ValueError, match="steps=0"):
        fine_tune(student, verses, steps=0)


def test_distillation_needs_a_shared_vocabulary(verses, names_data):
    with pytest.raises(ValueError, match="different vocabularies"):
        distill(tiny_gpt(verses.vocab), tiny_gpt(names_data.vocab), verses, steps=1)


def test_clipping_and_the_learning_rate_are_explicit(verses):
    from lmlab.train.descent import SGD

    model = tiny_gpt(verses.vocab)
    train_batches, evaluate_fn, _ = training_data(model, verses, batch_size=8, seed=0, valid_documents=10)
    common = dict(steps=2, evaluate_fn=evaluate_fn, eval_every=2, progress=False)
    with pytest.raises(ValueError, match="lr=0.5 is not used with a given optimizer"):
        train_model(model, train_batches, lr=0.5, optimizer=SGD(list(model.parameters()), lr=0.5), **common)
    with pytest.raises(ValueError, match="clip_norm=0"):
        train_model(model, train_batches, lr=1e-3, clip_norm=0, **common)
    with pytest.raises(ValueError, match="lr=None"):
        train_model(model, train_batches, **common)
    before = [p.detach().clone() for p in model.parameters()]
    train_model(model, train_batches, optimizer=SGD(list(model.parameters()), lr=1e-3), clip_norm=None, **common)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def mlp_setup(names_data):
    contexts, targets = names_data.examples("train", 3)
    valid = [a[:200] for a in names_data.examples("valid", 3)]

    def build():
        return build_model("mlp", names_data.vocab, context_size=3, embed_dim=4, hidden_dim=8)

    def train_batches(seed, epoch):
        from lmlab.data.corpora import batches

        return batches(contexts, targets, 64, shuffle=True, seed=1000 * seed + epoch)

    def evaluate_fn(model):
        from lmlab.models.lm import evaluate

        return evaluate(model, *valid)

    return build, train_batches, evaluate_fn


def test_compare_optimizers_gives_every_optimizer_the_same_start_per_seed(names_data):
    from lmlab.train.descent import SGD, Adam

    build, train_batches, evaluate_fn = mlp_setup(names_data)
    sgd = lambda p: SGD(p, lr=0.1)  # noqa: E731
    runs = compare_optimizers(build, {"sgd": sgd, "sgd again": sgd, "adam": lambda p: Adam(p, lr=0.01)},
                              train_batches, steps=6, evaluate_fn=evaluate_fn, seeds=(0, 1), eval_every=3)
    assert list(runs) == ["sgd", "sgd again", "adam"] and all(len(h) == 2 for h in runs.values())
    assert [h.step for h in runs["adam"]] == [[3, 6], [3, 6]]
    assert [h.valid_loss for h in runs["sgd"]] == [h.valid_loss for h in runs["sgd again"]]  # same start, batches
    assert runs["sgd"][0].valid_loss != runs["sgd"][1].valid_loss  # another seed, another run
    assert runs["sgd"][0].valid_loss != runs["adam"][0].valid_loss
    with pytest.raises(ValueError, match="optimizers is empty"):
        compare_optimizers(build, {}, train_batches, steps=2, evaluate_fn=evaluate_fn)
    with pytest.raises(ValueError, match="seeds=\\(0, 0\\)"):
        compare_optimizers(build, {"sgd": sgd}, train_batches, steps=2, evaluate_fn=evaluate_fn, seeds=(0, 0))
    with pytest.raises(ValueError, match="seeds=\\(\\)"):
        compare_optimizers(build, {"sgd": sgd}, train_batches, steps=2, evaluate_fn=evaluate_fn, seeds=())
