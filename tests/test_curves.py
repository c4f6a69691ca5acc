"""Curves over seeds: time to a target loss, the seed-spread verdict, the table and the band plot."""

import re

import matplotlib.pyplot as plt
import pytest

from lmlab.train.curves import (
    first_at_or_below,
    format_target_table,
    loss_bands,
    target_verdict,
    time_to_target,
)
from lmlab.train.loop import History


def history(losses, every=10, ms_per_step=2.0):
    steps = [every * (i + 1) for i in range(len(losses))]
    return History(step=steps, train_loss=list(losses), valid_loss=list(losses), valid_accuracy=[0.0] * len(losses),
                   elapsed_ms=[s * ms_per_step + 5 for s in steps], train_ms=[s * ms_per_step for s in steps])


RUNS = {
    "slow": [history([3.0, 2.8, 2.6, 2.4]), history([3.0, 2.9, 2.5, 2.3]), history([3.0, 2.9, 2.8, 2.7])],
    "fast": [history([2.6, 2.4, 2.3, 2.2], ms_per_step=3.0), history([2.7, 2.5, 2.4, 2.3], ms_per_step=3.0),
             history([2.5, 2.45, 2.3, 2.2], ms_per_step=3.0)],
}


def test_time_to_target_is_the_first_evaluation_at_or_below_it():
    assert first_at_or_below(RUNS["slow"][0], 2.6) == 2  # "at" counts
    assert first_at_or_below(RUNS["slow"][2], 2.5) is None
    slow, fast = time_to_target(RUNS, 2.5)
    assert slow.label == "slow" and slow.steps == (40, 30, None) and slow.reached == 2
    assert slow.train_ms == (80.0, 60.0, None) and slow.ms_per_step == (2.0, 2.0, 2.0)
    assert fast.steps == (20, 20, 10) and fast.train_ms == (60.0, 60.0, 30.0) and fast.reached == 3
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="target_nats="):
            time_to_target(RUNS, bad)
    with pytest.raises(ValueError, match="runs\\['empty'\\] has no evaluations"):
        time_to_target({"empty": [History()]}, 2.5)


def test_target_table_and_verdict_print_steps_per_seed_and_times_with_units():
    times = time_to_target(RUNS, 2.5)
    table = format_target_table(times)
    lines = table.splitlines()
    assert lines[0] == "target: validation cross-entropy <= 2.5 nats, 3 seeds"
    assert "40, 30, not reached" in lines[2] and "2 of 3" in lines[2] and "3 of 3" in lines[3]
    masked = [re.sub(r"[ ]*-?\d+(?:\.\d+)?(?:e[-+]?\d+)?[ ]?ms\b", " <time>", line) for line in lines]
    assert masked[2].count("<time>") == 4 and masked[3].count("<time>") == 4  # median, min, max of reached; per step
    assert masked[2].count("not reached") == 1  # in steps; the times summarise the seeds that got there
    assert "60.0 ms" not in lines[2] and "70 ms" in lines[2] and "(     60 ms to      80 ms)" in lines[2]
    assert format_target_table(time_to_target(RUNS, 2.0)).splitlines()[2].count("not reached") == 4  # 3 seeds, time
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns
    in_steps, in_ms = target_verdict(times), target_verdict(times, by="ms")
    assert in_steps.startswith("lowest mean steps to 2.5 nats over 3 seeds: fast: 17 steps")
    assert "slow: not reached on 1 of 3 seeds, not compared" in in_steps  # no mean, so no claim
    assert in_ms.startswith("lowest mean training milliseconds to 2.5 nats over 3 seeds: fast: 50 ms")
    reached = time_to_target(RUNS, 2.8)  # every seed of both gets there: the lead is compared, paired by seed
    assert "slow: 27 steps; difference -17 steps (-23 steps to -10 steps): fast lower, beyond noise" in target_verdict(
        reached)
    with pytest.raises(ValueError, match="by='s'"):
        target_verdict(times, by="s")
    with pytest.raises(ValueError, match="times is empty"):
        format_target_table([])


def test_loss_bands_draw_a_band_per_setting_and_the_target():
    fig = loss_bands(RUNS, "a title", target_nats=2.5)
    left, right = fig.axes
    assert left.get_xlabel() == "training step" and right.get_xlabel().startswith("training milliseconds")
    assert len(left.collections) == len(right.collections) == 2  # one band per setting
    assert list(left.lines[0].get_xdata()) == [10, 20, 30, 40]
    assert list(left.lines[0].get_ydata()) == pytest.approx([3.0, 2.8666667, 2.6333333, 2.4666667])
    assert list(right.lines[1].get_xdata()) == [30.0, 60.0, 90.0, 120.0]  # median training ms over seeds
    texts = [t.get_text() for t in right.get_legend().get_texts()]
    assert texts == ["slow (mean; band: min to max of 3 seeds)", "fast (mean; band: min to max of 3 seeds)",
                     "target: 2.5 nats"]
    assert left.get_legend() is None and fig._suptitle.get_text() == "a title"
    plt.close(fig)
    with pytest.raises(ValueError, match="runs is empty"):
        loss_bands({}, "t")
    with pytest.raises(ValueError, match="different steps"):
        loss_bands({"a": [history([1.0, 2.0]), history([1.0, 2.0], every=5)]}, "t")


def test_steps_to_stay_below_counts_to_the_step_after_which_it_never_comes_back():
    from lmlab.train.curves import steps_to_stay_below

    assert steps_to_stay_below([5, 3, 0.5, 2, 0.4, 0.1], 1.0) == 5  # the dip at step 3 comes back up
    assert steps_to_stay_below([0.5, 0.4], 1.0) == 1
    assert steps_to_stay_below([5, 0.5, 2], 1.0) is None  # ends above: never settled
    with pytest.raises(ValueError, match="threshold="):
        steps_to_stay_below([1.0], float("nan"))
    with pytest.raises(ValueError, match="values"):
        steps_to_stay_below([], 1.0)


def test_seed_verdict_pairs_seeds_and_calls_small_gaps_noise():
    from lmlab.train.curves import seed_comparison, seed_verdict

    clear = {"a": [2.40, 2.41, 2.39, 2.42], "b": [2.50, 2.52, 2.49, 2.51]}
    found = seed_comparison(clear["a"], clear["b"])
    assert found.delta == pytest.approx(-0.1) and not found.within_noise and found.verdict == "lower, beyond noise"
    text = seed_verdict(clear, "loss", "{:.3f}".format)
    assert text.startswith("lowest mean loss over 4 seeds: a: 2.405") and "b: 2.505" in text and "beyond noise" in text
    # a shared seed effect: b is a little above a on every seed, so pairing by seed finds it
    shared = {"a": [2.0, 2.5, 3.0], "b": [2.01, 2.51, 3.01]}
    assert not seed_comparison(shared["a"], shared["b"]).within_noise
    noisy = {"a": [2.40, 2.50, 2.45], "b": [2.46, 2.44, 2.47]}
    assert "within noise" in seed_verdict(noisy, "loss")
    assert "not reached" in seed_verdict({"a": [10, 20], "b": [None, 30]}, "steps")
    with pytest.raises(ValueError, match="seeds"):
        seed_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="seeds"):
        seed_comparison([1.0], [2.0])
    with pytest.raises(ValueError, match="values"):
        seed_verdict({"a": [1.0, 2.0]}, "loss")
