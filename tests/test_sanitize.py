"""The nbval sanitize rules do what they say, with nbval's own parser: every rule matches its example."""

from pathlib import Path

import pytest
from nbval.plugin import get_sanitize_patterns

SANITIZE = Path(__file__).with_name("sanitize.cfg")

# One example per rule, in the order of the file: (text a notebook prints, what the rule makes of it).
EXAMPLES = [
    ("median    0.01234 ms (p90 2.1 ms)", "median <time> (p90 <time>)"),
    ("int8 is 2.31× faster", "int8 is <ratio>× faster"),
    ("decoding at 1234.5 tokens/s, read 24.1 GB/s", "decoding at <rate>, read <rate>"),
    ("100%|████| 50/50 [00:01<00:00, 12.3it/s]", "100%|████| 50/50 [<elapsed><<remaining>, <rate>]"),
    ("<function f at 0x7f3a2c1b9d60>", "<function f at 0x<address>>"),
    ("<Figure size 1100x650 with 1 Axes>", "<Figure with 1 Axes>"),
    ("CPU: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz | cores: 2 | torch threads: 1",
     "CPU: <cpu> | cores: <cores> | torch threads: 1"),
    ("the nodes (63% of it), floor 69.5%", "the nodes ( <share>% of it), floor <share>%"),
    ("L   5.91 in flight", "L <count> in flight"),
    ("VBox(children=(HBox(children=(Text(value='and god said', description='context'…", "<panel>"),
]


def patterns():
    return get_sanitize_patterns(SANITIZE.read_text(encoding="utf-8"))


def sanitize(text: str) -> str:
    import re

    for regex, replace in patterns():
        text = re.sub(regex, replace, text)
    return text


def test_file_uses_lf_line_endings():
    assert b"\r\n" not in SANITIZE.read_bytes()


def test_every_rule_has_an_example_and_no_more():
    assert len(patterns()) == len(EXAMPLES)


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_rule_matches_its_example(index):
    import re

    regex, _ = patterns()[index]
    text, expected = EXAMPLES[index]
    assert re.search(regex, text), f"rule {index} ({regex}) no longer matches {text!r}: a silent hole"
    assert sanitize(text) == expected


@pytest.mark.parametrize("a, b", [
    ("median    0.01234 ms", "median    1.234e+04 ms"),
    ("  12.5 µs per token", "   3.1 µs per token"),
    ("first call 812 ms, then 4.1 ms", "first call 97.3 ms, then 4.3 ms"),
    ("fit took 1.2 s", "fit took 0.98 s"),
])
def test_two_runs_with_different_times_print_the_same(a, b):
    assert sanitize(a) == sanitize(b)


def test_a_panel_saved_before_and_after_its_plain_text_form_reads_the_same():
    from lmlab.notebook.widgets import LIVE

    before = "VBox(children=(FloatLogSlider(value=0.1, description='learning rate', max=0.3, min=-3.0, readout_format…"
    assert sanitize(before) == sanitize(f"DescentPanel: sliders for the learning rate. {LIVE}") == "<panel>"


@pytest.mark.parametrize("text", [
    "accuracy 0.2761, perplexity 71.32",
    "n = 3, 7973 types, 789650 tokens",
    "sizes 1.5 MB and 12 bytes",
    "torch threads: 1 | torch 2.13.0 | device: cpu",
    "the bigram model is best",
])
def test_measured_quantities_other_than_time_are_left_alone(text):
    assert sanitize(text) == text
