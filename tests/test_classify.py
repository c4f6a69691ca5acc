"""Text classifiers (lmlab.tasks.classify): labels, splits, metrics against scikit-learn, four models, ONNX export."""

import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from lmlab.cli import main
from lmlab.data.corpora import kjv_books, name_frequencies
from lmlab.measure.results import Result
from lmlab.tasks.classify import (
    BOOK_GROUPS,
    MODELS,
    LabelledTexts,
    book_group,
    book_group_table,
    classification_metrics,
    confusion_plot,
    kjv_by_book_group,
    kjv_by_testament,
    load_task,
    make_classifier,
    measure_classifier,
    names_by_sex,
    onnx_steps,
    token_list_precision,
    tradeoff_summary,
    within_noise,
)

# Labels and splits ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kjv(kjv_corpus):
    return kjv_corpus  # conftest's session copy of load_kjv()


@pytest.fixture(scope="module")
def books():
    return kjv_by_book_group()


def test_every_one_of_the_66_books_has_exactly_one_group():
    covered = [n for first, last in BOOK_GROUPS.values() for n in range(first, last + 1)]
    assert sorted(covered) == list(range(1, 67))  # no gap, no overlap
    assert len(kjv_books()) == 66 and kjv_books()[0] == "Genesis" and kjv_books()[65] == "Revelation"
    assert [book_group(n) for n in (1, 5, 6, 19, 23, 39, 40, 44, 45, 65, 66)] == [
        "law", "law", "history", "poetry", "major prophets", "minor prophets", "gospels & Acts", "gospels & Acts",
        "epistles", "epistles", "Revelation"]
    table = book_group_table()
    assert table["count"].sum() == 66 and table.iloc[0]["books"] == "Genesis - Deuteronomy"
    for bad in (0, 67):
        with pytest.raises(ValueError, match=f"number={bad}"):
            book_group(bad)


def test_the_verses_are_load_kjvs_documents_and_the_split_is_the_language_models(kjv, books):
    testament = kjv_by_testament()
    assert books.texts == kjv.documents == testament.texts
    groups = books.counts()
    old = sum(groups[g] for g in ("law", "history", "poetry", "major prophets", "minor prophets"))
    assert testament.counts() == {"Old": old, "New": len(kjv.documents) - old} and len(kjv.documents) == 31103
    for seed in (0, 3):
        ours, theirs = books.split(seed=seed), kjv.split(seed=seed)
        assert all(ours[part].texts == theirs[part] for part in ("train", "valid", "test"))
    # the labels travel with their verses: every test verse keeps the label it has in the whole corpus
    label_of = dict(zip(books.texts, books.labels))
    test = books.split(seed=0)["test"]
    repeats = Counter(kjv.documents)  # a few verses repeat word for word (in different books)
    unique = [i for i, t in enumerate(test.texts) if repeats[t] == 1]
    assert all(test.labels[i] == label_of[test.texts[i]] for i in unique)
    assert books.split(seed=0)["test"] == test and books.split(seed=1)["test"] != test


def test_names_on_both_lists_take_the_more_frequent_sex_and_ties_are_dropped():
    names = names_by_sex()
    male, female = name_frequencies("male"), name_frequencies("female")
    both = set(male) & set(female)
    assert names.info["on both lists"] == len(both) == 331
    assert names.info["both -> female"] + names.info["both -> male"] + names.info["ties dropped"] == len(both)
    assert len(names) == len(set(male) | set(female)) - names.info["ties dropped"]
    assert len(set(names.texts)) == len(names.texts)
    label = dict(zip(names.texts, names.labels))
    for name in both:
        if male[name] != female[name]:
            assert names.classes[label[name]] == ("male" if male[name] > female[name] else "female")
        else:
            assert name not in label
    assert names.counts() == {"female": len(set(female) - set(male)) + names.info["both -> female"],
                              "male": len(set(male) - set(female)) + names.info["both -> male"]}


def test_bad_labelled_texts_raise_value_errors_naming_the_problem():
    with pytest.raises(ValueError, match="texts\\[1\\]=' ' is empty"):
        LabelledTexts("t", "word", ("a b", " "), (0, 1), ("x", "y"))
    with pytest.raises(ValueError, match="label='z' is unknown"):
        LabelledTexts.from_names("t", "word", ("a", "b"), ("x", "z"), ("x", "y"))
    with pytest.raises(ValueError, match="label=2 is unknown"):
        LabelledTexts("t", "word", ("a", "b"), (0, 2), ("x", "y"))
    with pytest.raises(ValueError, match="at least 2 distinct classes"):
        LabelledTexts("t", "word", ("a",), (0,), ("x",))
    with pytest.raises(ValueError, match="task='news' is unknown"):
        load_task("news")


# Metrics ------------------------------------------------------------------------------------------------------


def _sklearn(truth, pred, k):
    p, r, f, _ = precision_recall_fscore_support(truth, pred, labels=list(range(k)), average="macro", zero_division=0)
    return accuracy_score(truth, pred), p, r, f, confusion_matrix(truth, pred, labels=list(range(k)))


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_scikit_learns_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 9))
    truth = rng.integers(0, k, size=int(rng.integers(5, 300)))
    pred = np.where(rng.random(len(truth)) < 0.6, truth, rng.integers(0, k, size=len(truth)))
    m = classification_metrics(truth, pred, [f"c{i}" for i in range(k)])
    acc, p, r, f, cm = _sklearn(truth, pred, k)
    assert (m.accuracy, m.precision, m.recall, m.f1) == pytest.approx((acc, p, r, f), abs=1e-12)
    assert np.array_equal(m.confusion, cm) and m.n == len(truth)
    assert m.accuracy_se == pytest.approx(np.sqrt(acc * (1 - acc) / len(truth)))


@pytest.mark.parametrize("truth, pred", [
    ([0, 0, 1, 1], [0, 0, 1, 1]),  # all right
    ([0, 0, 1, 1], [1, 1, 0, 0]),  # all wrong: every class's P, R, F1 are 0
    ([0, 1, 2, 0], [0, 0, 0, 0]),  # classes 1 and 2 never predicted: precision 0 by convention
    ([0, 0, 0, 0], [0, 1, 0, 2]),  # classes 1 and 2 never true: recall 0 by convention
    ([2, 2, 2], [2, 2, 2]),  # classes 0 and 1 appear nowhere: they count in the macro mean as 0
])
def test_metrics_equal_scikit_learns_on_edge_cases_with_zero_division_counted_as_zero(truth, pred):
    m = classification_metrics(truth, pred, ("a", "b", "c"))
    assert (m.accuracy, m.precision, m.recall, m.f1) == pytest.approx(_sklearn(truth, pred, 3)[:4], abs=1e-12)
    assert np.array_equal(m.confusion, _sklearn(truth, pred, 3)[4])


def test_metrics_take_class_names_and_reject_bad_input():
    m = classification_metrics(["a", "b", "b"], ["a", "a", "b"], ("a", "b"))
    assert m.accuracy == pytest.approx(2 / 3) and m.confusion.tolist() == [[1, 0], [1, 1]]
    with pytest.raises(ValueError, match="y_pred holds label='z', which is unknown"):
        classification_metrics(["a"], ["z"], ("a", "b"))
    with pytest.raises(ValueError, match="y_pred holds label=5, which is unknown"):
        classification_metrics([0, 1], [0, 5], ("a", "b"))
    with pytest.raises(ValueError, match="at least 2 distinct classes"):
        classification_metrics([0], [0], ("a",))
    with pytest.raises(ValueError, match="same number"):
        classification_metrics([0, 1], [0], ("a", "b"))


def test_precision_from_token_lists_ignores_which_text_got_which_label():
    truth = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1]
    pred = [0, 1, 0, 1, 2, 2, 0, 2, 1, 1]
    shuffled = random.Random(0).sample(pred, len(pred))
    wrong = token_list_precision(truth, pred)
    assert wrong == token_list_precision(truth, shuffled) == 0.9  # the same bag of labels, whatever the order
    right, right_shuffled = (classification_metrics(truth, p, "abc").precision for p in (pred, shuffled))
    assert right < 0.7 < wrong and right != right_shuffled
    assert token_list_precision([0, 0, 1], [1, 1, 1]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="predicted_tokens is empty"):
        token_list_precision([0], [])


def test_argmax_over_dim_2_of_batch_by_classes_logits_raises_and_the_class_axis_is_minus_one():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])  # (batch, classes)
    with pytest.raises(IndexError, match="Dimension out of range"):
        logits.argmax(dim=2)
    assert logits.argmax(dim=-1).tolist() == [1, 0]
    assert logits.argmax(dim=0).tolist() != [1, 0]  # the batch axis gives a different, wrong answer


# The classifiers ----------------------------------------------------------------------------------------------


def _toy(level: str, n: int = 48, seed: int = 0) -> LabelledTexts:
    """A separable task: class "sky" texts use one set of tokens, class "earth" another."""
    rng = random.Random(seed)
    if level == "word":
        words = (["sun", "star", "moon", "cloud"], ["rock", "sand", "stone", "clay"])
        texts = [" ".join(rng.choice(words[i % 2]) for _ in range(rng.randint(2, 6))) for i in range(n)]
    else:
        letters = ("aeiou", "xyzqw")
        texts = ["".join(rng.choice(letters[i % 2]) for _ in range(rng.randint(2, 7))) for i in range(n)]
    return LabelledTexts("toy", level, tuple(texts), tuple(i % 2 for i in range(n)), ("sky", "earth"))


SMALL = {"linear": {}, "bilstm": {}, "cnn": {}, "transformer": {"pretrain_steps": 5, "layers": 1}}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("level", ["word", "char"])
def test_each_classifier_learns_a_separable_toy_task_perfectly(kind, level):
    toy = _toy(level)
    clf = make_classifier(kind, dim=16, max_length=8, min_count=1, **SMALL[kind])
    losses = clf.fit(toy, steps=60, batch_size=16, seed=0)
    assert clf.predict_logits(toy.texts).shape == (len(toy), 2)
    assert (clf.predict(toy.texts) == np.array(toy.labels)).all()
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_fitting_is_repeatable_and_batching_does_not_change_the_logits():
    toy = _toy("word")
    first, again = (make_classifier("bilstm", dim=8, min_count=1) for _ in range(2))
    assert first.fit(toy, 10, seed=3) == again.fit(toy, 10, seed=3)
    one_by_one = torch.cat([first.predict_logits([t]) for t in toy.texts])
    assert torch.allclose(first.predict_logits(toy.texts, batch_size=7), one_by_one, atol=1e-5)


def test_classifiers_refuse_bad_input():
    toy = _toy("word")
    clf = make_classifier("cnn", dim=8, min_count=1)
    with pytest.raises(ValueError, match="not trained"):
        clf.predict(["sun"])
    with pytest.raises(ValueError, match="batch_size=0 is out of range"):
        clf.fit(toy, 5, batch_size=0)
    with pytest.raises(ValueError, match="steps=0 is out of range"):
        clf.fit(toy, 0)
    clf.fit(toy, 3)
    with pytest.raises(ValueError, match="texts\\[1\\]='' is empty"):
        clf.predict(["sun", ""])
    with pytest.raises(ValueError, match="texts is empty"):
        clf.predict([])
    with pytest.raises(ValueError, match="batch_size=0 is out of range"):
        measure_classifier(clf, toy, batch_sizes=(0,))
    with pytest.raises(ValueError, match="model='svm' is unknown"):
        make_classifier("svm")


def test_measure_classifier_gives_one_row_per_batch_size_with_the_metrics():
    toy = _toy("char")
    clf = make_classifier("linear", dim=8)
    clf.fit(toy, 40)
    rows, metrics = measure_classifier(clf, toy, batch_sizes=(1, 32), repeat=3, corpus="toy")
    assert [r.setting for r in rows] == ["batch 1", "batch 32"] and [r.batch_size for r in rows] == [1, 32]
    assert all(r.accuracy == metrics.accuracy and r.predictions == len(toy) == metrics.n for r in rows)
    assert rows[0].params == clf.params > 0 and rows[0].corpus == "toy" and rows[0].perplexity is None


def test_the_tradeoff_summary_calls_a_difference_inside_two_standard_errors_noise():
    def row(name, acc, ms):
        return Result(name, "t", "batch 1", acc, ms, ms, predictions=500)

    fast, slow = row("fast", 0.85, 0.1), row("slow", 0.86, 2.0)
    assert within_noise(fast, slow)
    summary = tradeoff_summary([fast, slow])
    assert summary == ("the most accurate, within noise of the best: fast, slow; the fastest of them is fast (0.850), "
                       "20.0× less time per call than slow")
    assert tradeoff_summary([row("fast", 0.87, 0.1), slow]).startswith("the most accurate, within noise of the best: "
                                                                         "fast, slow; the fastest of them is fast")
    far = row("far", 0.99, 2.0)
    assert not within_noise(fast, far)
    assert tradeoff_summary([fast, far]) == "far is the most accurate (0.990), beyond noise of every other model"
    assert tradeoff_summary([row("quick", 0.99, 0.1), slow]) == ("quick is the most accurate (0.990), beyond noise of "
                                                                 "every other model and the fastest")


# ONNX ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_table():
    toy = _toy("word")
    clf = make_classifier("transformer", dim=16, max_length=8, min_count=1, pretrain_steps=5, layers=1)
    clf.fit(toy, 20, batch_size=16)
    return onnx_steps(clf, toy.texts[:8], batch_sizes=(1, 4), repeat=2)


def test_onnx_logits_match_pytorch_at_every_step(onnx_table):
    assert list(onnx_table["step"]) == ["PyTorch (class logits only)", "ONNX, as trained (+ MLM logits, pooler)",
                                        "ONNX, class logits only",
                                        "ONNX, fused (ORT_ENABLE_ALL)", "ONNX, + BERT fusions"]
    assert (onnx_table["max |logit diff|"] <= 1e-4).all()


def test_removing_the_lm_head_and_pooler_and_fusing_shrink_the_graph(onnx_table):
    nodes = dict(zip(onnx_table["step"], onnx_table["nodes"]))
    mb = dict(zip(onnx_table["step"], onnx_table["stored MB"]))
    assert nodes["ONNX, class logits only"] < nodes["ONNX, as trained (+ MLM logits, pooler)"]
    assert mb["ONNX, class logits only"] < mb["ONNX, as trained (+ MLM logits, pooler)"]
    assert nodes["ONNX, + BERT fusions"] < nodes["ONNX, fused (ORT_ENABLE_ALL)"] < nodes["ONNX, class logits only"]


def test_onnx_table_and_verdicts_show_spreads(onnx_table):
    from lmlab.tasks.classify import onnx_table as table
    from lmlab.tasks.classify import onnx_verdicts

    shown = table(onnx_table)
    assert "timings" not in shown.columns and "ms, batch 1: median (p90)" in shown.columns
    assert all("(p90 " in cell for cell in shown["ms, batch 1: median (p90)"])
    lines = onnx_verdicts(onnx_table)
    assert len(lines) == 3 and lines[0].startswith("ONNX, as trained (+ MLM logits, pooler) → ONNX, class logits")
    assert all(("faster" in x or "slower" in x or "within noise" in x) and "batch 4" in x for x in lines)
    with pytest.raises(ValueError, match="step='ONNX'"):
        onnx_verdicts(onnx_table, [("ONNX", "PyTorch (class logits only)")])


def test_compare_macro_f1_is_paired_and_agrees_with_the_metrics():
    from lmlab.tasks.classify import compare_macro_f1

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    good = np.where(rng.random(300) < 0.8, truth, rng.integers(0, 3, 300))
    bad = rng.integers(0, 3, 300)
    gap = compare_macro_f1(truth, good, bad, ["a", "b", "c"], resamples=200)
    expected = (classification_metrics(truth, good, ["a", "b", "c"]).f1
                - classification_metrics(truth, bad, ["a", "b", "c"]).f1)
    assert gap.delta == pytest.approx(expected) and gap.paired and gap.documents == 300
    assert gap.verdict == "higher, beyond noise" and gap.low <= gap.delta <= gap.high
    same = compare_macro_f1(truth, good, good, ["a", "b", "c"], resamples=200)
    assert same.delta == same.low == same.high == 0.0 and same.within_noise
    with pytest.raises(ValueError, match="300, 300 and 2"):
        compare_macro_f1(truth, good, bad[:2], ["a", "b", "c"])


def test_confusion_plot_normalizes_rows_with_a_colour_bar():
    import matplotlib.pyplot as plt

    metrics = classification_metrics([0, 0, 0, 1], [0, 1, 1, 1], ["x", "y"])
    fig = confusion_plot(metrics, "toy", normalize=True)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.33\n(1)", "0.67\n(2)", "0.00\n(0)", "1.00\n(1)"]
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "share of the true class's texts"
    plt.close(fig)


def test_onnx_steps_refuses_another_model():
    clf = make_classifier("linear", dim=4)
    clf.fit(_toy("word"), 2)
    with pytest.raises(ValueError, match="not a TransformerClassifier"):
        onnx_steps(clf, ["sun"])


# The command line ------------------------------------------------------------------------------------------------


def test_classify_command_prints_and_saves_its_rows(tmp_path, capsys):
    out = tmp_path / "rows.json"
    argv = ["classify", "names-sex", "--model", "linear", "--steps", "20", "--repeat", "2", "--save", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "names-sex linear: accuracy" in printed and "macro precision" in printed
    rows = json.loads(out.read_text())
    assert [r["setting"] for r in rows] == ["batch 1", "batch 32"] and rows[0]["corpus"] == "names test"


def test_classify_command_refuses_a_bad_save_path_and_model_before_training(tmp_path, capsys):
    assert main(["classify", "names-sex", "--save", str(tmp_path / "missing" / "rows.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["classify", "names-sex", "--model", "svm"]) == 2
    assert "model='svm' is unknown" in capsys.readouterr().err
    assert main(["classify", "news", "--steps", "1"]) == 2
    assert "task='news' is unknown" in capsys.readouterr().err
