"""Training against the clock (chapter 05's distillation race): per-document scores, budgets, paired intervals."""

import copy

import numpy as np
import pytest
import torch

from lmlab.data.corpora import Corpus, tokenize_corpus
from lmlab.measure.stats import paired_nll_interval
from lmlab.models.kinds import build_model
from lmlab.models.scoring import document_scores
from lmlab.train.loop import TimedHistory, describe_race, distillation_race, nll_difference, race_plot, train_timed


@pytest.fixture(scope="module")
def verses(kjv_corpus):
    return tokenize_corpus(Corpus("kjv-slice", "word", kjv_corpus.documents[:400]), min_count=1)


@pytest.fixture(scope="module")
def slice_(verses):
    return verses.head("valid", 12)


def tiny_gpt(vocab, seed=0, width=16, positions=64):
    torch.manual_seed(seed)
    return build_model("gpt", vocab, n_layer=1, n_embd=width, n_head=2, n_positions=positions, dropout=0.0)


def test_document_scores_add_up_to_evaluate_documents(verses):
    model = tiny_gpt(verses.vocab, positions=24)  # shorter than some verses: both cut them the same way
    assert max(len(doc) for doc in verses.ids["valid"]) + 1 > 24
    whole = model.evaluate_documents(verses, "valid")
    for batch_size in (1, 7, 64):
        parts = document_scores(model, verses, "valid", batch_size=batch_size)
        assert len(parts["tokens"]) == len(verses.ids["valid"])
        assert parts["tokens"].sum() == whole["tokens"]
        assert parts["nll_nats"].sum() / parts["tokens"].sum() == pytest.approx(whole["nll_nats"], rel=1e-6)
        assert parts["correct"].sum() / parts["tokens"].sum() == pytest.approx(whole["accuracy"], abs=1e-12)
    with pytest.raises(ValueError, match="batch_size=0"):
        document_scores(model, verses, "valid", batch_size=0)


def test_training_by_steps_is_repeatable_and_evaluates_on_schedule(verses, slice_):
    runs = []
    for _ in range(2):
        model = tiny_gpt(verses.vocab)
        runs.append(train_timed(model, verses, evaluation=slice_, split="valid", steps=6, evaluations=2,
                                batch_size=8, corpus="kjv-slice valid[:12]", label="plain"))
    first, second = runs
    assert first.step == [0, 3, 6] and first.label == "plain" and first.corpus == "kjv-slice valid[:12]"
    assert first.nll_nats == second.nll_nats and first.accuracy == second.accuracy
    assert first.train_ms[0] == 0 and first.train_ms == sorted(first.train_ms) and first.train_ms[-1] > 0
    assert first.nll_nats[-1] < first.nll_nats[0]
    assert first.perplexity[-1] == pytest.approx(np.exp(first.nll_nats[-1]))
    low, high = first.perplexity_interval()
    assert low <= first.perplexity[-1] <= high
    assert first.at_ms(first.train_ms[1]) == 1 and first.at_ms(1e9) == 2
    with pytest.raises(ValueError, match="before the first evaluation"):
        first.at_ms(-1)


def test_a_budget_counts_every_step_and_a_slow_step_takes_its_share(verses, slice_, monkeypatch):
    import lmlab.measure.timing

    clock = [0.0]  # a fake clock, in seconds, that only the steps below advance
    monkeypatch.setattr(lmlab.measure.timing.time, "perf_counter", lambda: clock[0])  # the Stopwatch's clock

    def costing(ms):  # a loss whose step takes ``ms`` on the fake clock, like a teacher's forward would
        def loss_fn(model, batch):
            clock[0] += ms / 1000
            return model.loss(batch)
        return loss_fn

    common = dict(evaluation=slice_, split="valid", budget_ms=100, batch_size=4, evaluations=2)
    quick = train_timed(tiny_gpt(verses.vocab), verses, loss_fn=costing(30), **common)
    assert quick.step == [0, 2, 3] and quick.train_ms == pytest.approx([0, 60, 90])  # a 4th step would end at 120
    slow = train_timed(tiny_gpt(verses.vocab), verses, loss_fn=costing(60), **common)
    assert slow.step == [0, 1] and slow.train_ms == pytest.approx([0, 60])  # evaluations do not move the clock


@pytest.mark.parametrize("settings, match", [
    (dict(), "exactly one"),
    (dict(steps=2, budget_ms=100), "exactly one"),
    (dict(budget_ms=0), "budget_ms=0 is out of range"),
    (dict(budget_ms=float("inf")), "budget_ms=inf"),
    (dict(steps=0), "steps=0"),
    (dict(steps=2, evaluations=0), "evaluations=0"),
    (dict(steps=2, lr=0.0), "lr="),
])
def test_bad_training_settings_are_clear_errors(verses, slice_, settings, match):
    with pytest.raises(ValueError, match=match):
        train_timed(tiny_gpt(verses.vocab), verses, evaluation=slice_, split="valid", **settings)


def test_the_race_starts_both_runs_from_the_same_student(verses, slice_, names_data):
    student, teacher = tiny_gpt(verses.vocab), tiny_gpt(verses.vocab, seed=5, width=32)
    before = copy.deepcopy(student.state_dict())
    runs = distillation_race(student, teacher, verses, 60, evaluation=slice_, split="valid", teacher_name="big",
                             batch_size=4, evaluations=2)
    assert list(runs) == ["data alone", "distilled from big"]
    plain, distilled = runs.values()
    assert plain.nll_nats[0] == distilled.nll_nats[0] and np.array_equal(plain.tokens, distilled.tokens)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # the student is untouched
    with pytest.raises(ValueError, match="different vocabularies"):
        distillation_race(student, tiny_gpt(names_data.vocab), verses, 10, evaluation=slice_, split="valid")


def test_paired_interval_is_the_direct_bootstrap():
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 30, size=25).astype(float)
    first = tokens * rng.uniform(2.0, 4.0, size=25)
    second = first + tokens * rng.normal(0.2, 0.05, size=25)  # second worse by about 0.2 nats per token
    difference, low, high = paired_nll_interval(first, second, tokens, resamples=500, seed=3)
    assert difference == pytest.approx((first.sum() - second.sum()) / tokens.sum())
    picks = np.random.default_rng(3).integers(0, 25, size=(500, 25))
    direct = [(first[p].sum() - second[p].sum()) / tokens[p].sum() for p in picks]
    assert (low, high) == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])))
    assert low < difference < high < 0
    assert paired_nll_interval(first, first, tokens) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="one entry per document"):
        paired_nll_interval(first, second[:-1], tokens)
    with pytest.raises(ValueError, match="level=1.5"):
        paired_nll_interval(first, second, tokens, level=1.5)
    with pytest.raises(ValueError, match="resamples=10"):
        paired_nll_interval(first, second, tokens, resamples=10)


def history(label, losses, tokens, ms):
    """A made-up run: per evaluation, every document's loss per token."""
    run = TimedHistory(label, "made-up slice", tokens)
    for i, (loss, at) in enumerate(zip(losses, ms)):
        run.train_ms.append(at)
        run.step.append(i * 10)
        run.document_nll.append(tokens * loss)
        run.document_correct.append(tokens * 0.1)
    return run


def test_the_comparison_reads_each_run_at_equal_milliseconds_and_says_who_leads():
    tokens = np.arange(10, 30, dtype=float)
    fast = history("data alone", [5.0, 4.0, 3.5], tokens, [0, 2000, 4990])
    slow = history("distilled", [5.0, 3.8, 3.0], tokens, [0, 2500, 4900])
    gap = nll_difference(fast, slow)
    assert gap["difference"] == pytest.approx(0.5) and gap["first_ms"] == 4990 and gap["second_ms"] == 4900
    assert nll_difference(fast, slow, at_ms=2600)["difference"] == pytest.approx(0.2)
    text = describe_race(fast, slow)
    assert "distilled is ahead of data alone by 0.500" in text and "beyond the noise" in text
    assert "distilled minus data alone: -0.500 to -0.500" in describe_race(slow, fast)  # the order is the sign's
    better = history("data alone", [5.0, 4.0, 2.5], tokens, [0, 2000, 4990])
    assert "data alone is ahead of distilled by 0.500" in describe_race(better, slow)
    assert "within the noise" in describe_race(fast, history("copy", [5.0, 4.0, 3.5], tokens, [0, 1, 2]))
    with pytest.raises(ValueError, match="different documents"):
        nll_difference(fast, history("other", [1.0], tokens[:-1], [0]))


def test_race_plot_draws_each_run_and_the_references():
    import matplotlib.pyplot as plt

    tokens = np.arange(10, 30, dtype=float)
    runs = {"a": history("a", [5.0, 4.0], tokens, [0, 100]), "b": history("b", [5.0, 3.0], tokens, [0, 90])}
    fig = race_plot(runs, {"unigram": 150.0, "teacher": 2.0}, title="test")  # the runs span e^3 to e^5
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["a (10 steps)", "b (10 steps)", "unigram: 150.0", "teacher: 2.0 (below this axis)"]
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [150.0]
    plt.close(fig)
    with pytest.raises(ValueError, match="runs is empty"):
        race_plot({})


def test_distillation_trials_repeat_and_compare_at_equal_steps_and_at_the_end(verses, slice_, names_data):
    from lmlab.train.loop import describe_trials, distillation_loss, distillation_trials

    student, teacher = tiny_gpt(verses.vocab), tiny_gpt(verses.vocab, seed=5, width=32)
    before = copy.deepcopy(student.state_dict())
    settings = dict(steps=2, data_steps=4, evaluation=slice_, split="valid", seeds=(1, 2), temperatures=(1.0, 3.0),
                    batch_size=4)
    trials = distillation_trials(student, teacher, verses, **settings)
    assert list(trials["seed"]) == [1, 1, 2, 2] and list(trials["T"]) == [1.0, 3.0, 1.0, 3.0]
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # the student is untouched
    # the distilled copy is train_timed with distillation_loss on the same seed: by steps, the same loss again
    again = train_timed(copy.deepcopy(student), verses, evaluation=slice_, split="valid", steps=2, evaluations=1,
                        seed=2, batch_size=4, loss_fn=distillation_loss(teacher, 3.0, 0.9))
    row = trials.iloc[3]
    assert row["distilled"] == again.nll_nats[-1]
    for name, plain in (("equal steps", "data, equal steps"), ("end", "data, end")):
        assert row[f"Δ {name}"] == pytest.approx(row["distilled"] - row[plain])
        assert row[f"low {name}"] <= row[f"Δ {name}"] <= row[f"high {name}"]
    lines = describe_trials(trials)
    assert len(lines) == 2 and lines[1].startswith("distilled at T = 3: at equal steps (2): loss ")
    assert "of 2 seeds; against 4 data-alone steps: loss " in lines[0]
    with pytest.raises(ValueError, match="multiple of steps"):
        distillation_trials(student, teacher, verses, **(settings | {"data_steps": 5}))
    with pytest.raises(ValueError, match="different vocabularies"):
        distillation_trials(student, tiny_gpt(names_data.vocab), verses, **settings)
