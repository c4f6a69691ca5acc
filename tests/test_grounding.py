"""The shop assistant's own task: the FAQ evaluation set, checking a reply, accuracy with its standard error,
retrieving FAQ lines and the prompts built from them."""

import json
import math

import pytest

from lmlab.data.shipped import DATA_DIR
from lmlab.measure.stats import binomial_se
from lmlab.measure.timing import Timing
from lmlab.serving.grounding import (
    CHAPTER_INSTRUCTIONS,
    GROUNDED_INSTRUCTIONS,
    PROMPTS,
    FaqItem,
    PromptRun,
    answer_all,
    check_answer,
    faq_accuracy,
    faq_messages,
    load_faq,
    load_faq_eval,
    prompt_table,
    retrieval_messages,
    retrieve,
    tokens,
)


@pytest.fixture(scope="module")
def faq():
    return load_faq()


@pytest.fixture(scope="module")
def items():
    return load_faq_eval()


def item_for(items, question):
    return next(item for item in items if item.question == question)


def test_the_eval_file_loads_and_each_item_points_at_its_faq_line(faq, items):
    assert 20 <= len(items) <= 30
    assert json.loads((DATA_DIR / "shop-faq-eval.json").read_text())["about"]  # says how it was made
    for item in items:
        assert 0 <= item.faq_line < len(faq)
        assert faq[item.faq_line].startswith(item.topic + ":")
        assert item.must or item.must_not
    assert {item.faq_line for item in items} == set(range(1, len(faq)))  # every line but the title is asked about


def test_each_faq_line_given_as_the_reply_passes_its_own_questions(faq, items):
    """The criteria can be met: the FAQ's own sentence is a right answer to every question about it."""
    assert [item.question for item in items if not check_answer(faq[item.faq_line], item)] == []


def test_check_answer_on_hand_written_replies(items):
    cash = item_for(items, "Do you accept cash?")
    assert check_answer("We accept cards, PayPal and bank transfer, but not cash on delivery.", cash)
    assert check_answer("WE ACCEPT CARDS AND PAYPAL.", cash)  # case does not matter
    assert not check_answer("We accept cash, but we do not accept credit or debit cards.", cash)
    assert not check_answer("Yes, of course.", cash)
    assert not check_answer("", cash)
    delivery = item_for(items, "How long does delivery take?")
    assert check_answer("Delivery takes 2 to 4 working days.", delivery)
    assert check_answer("It takes two to four days.", delivery)
    assert not check_answer("Generally, it takes around 2-3 days.", delivery)
    sunday = item_for(items, "Are you open on Sunday?")
    assert check_answer("No, we are open Monday to Saturday, 9:00 to 18:00.", sunday)
    assert check_answer("We are not open on Sundays.", sunday)
    assert not check_answer("Yes, we are open on Sunday from 10 to 16.", sunday)
    methods = item_for(items, "Which payment methods do you take?")
    assert check_answer("Cards, PayPal and bank transfer; not cash on delivery.", methods)
    assert not check_answer("We take credit cards, PayPal, and cash.", methods)
    free = item_for(items, "Is shipping free?")
    assert check_answer("Only on orders over 50 euros; below that it costs 4.90 euros.", free)
    assert not check_answer("Yes, shipping is free. Orders over 50 euros get a discount.", free)


def test_check_answer_needs_every_must_and_no_must_not():
    item = FaqItem(topic="Payment", faq_line=6, question="?", must=("card", "paypal"), must_not=("cash",))
    assert check_answer("card and PayPal", item)
    assert not check_answer("card only", item)
    assert not check_answer("card, PayPal or cash", item)


def test_faq_accuracy_is_the_share_right_with_the_binomial_standard_error():
    toy = [FaqItem("Sizes", 7, "?", ("larger",), ()), FaqItem("Sizes", 7, "?", ("larger",), ()),
           FaqItem("Sizes", 7, "?", ("larger",), ()), FaqItem("Care", 8, "?", ("damp",), ("dryer",))]
    accuracy, se = faq_accuracy(["the larger one", "larger", "smaller", "a damp cloth, then a hair dryer"], toy)
    assert accuracy == 0.5
    assert se == pytest.approx(binomial_se(0.5, 4)) == pytest.approx(math.sqrt(0.25 / 4))
    with pytest.raises(ValueError, match="answers"):
        faq_accuracy(["one"], toy)
    with pytest.raises(ValueError, match="items"):
        faq_accuracy([], [])


def test_tokens_lowercase_stem_and_drop_stopwords():
    assert tokens("Do you accept CASH?") == ["accept", "cash"]
    assert tokens("Orders ship within one working day.") == ["order", "ship", "within", "one", "work", "day"]


def test_retrieve_finds_the_payment_line_for_a_cash_question(faq):
    assert retrieve("Do you accept cash?", faq, 1) == [faq[6]]
    top3 = retrieve("Can I pay cash on delivery?", faq, 3)
    assert len(top3) == 3 and top3[0] == faq[6] and len(set(top3)) == 3


def test_retrieve_top_1_on_the_eval_set(faq, items):
    hits = [retrieve(item.question, faq, 1)[0] == faq[item.faq_line] for item in items]
    assert sum(hits) / len(hits) >= 0.8  # a lexical score misses a few paraphrases; the k=3 prompt has room for them


def test_retrieve_refuses_bad_arguments(faq):
    for k in (0, len(faq) + 1):
        with pytest.raises(ValueError, match=rf"k={k}.*\[1, {len(faq)}\]"):
            retrieve("cash?", faq, k)
    with pytest.raises(ValueError, match="question"):
        retrieve("   ", faq, 1)
    with pytest.raises(ValueError, match="faq_lines"):
        retrieve("cash?", [], 1)


def test_the_prompts(faq):
    question = "Do you accept cash?"
    chapter = faq_messages(question, faq)
    assert chapter == [{"role": "system", "content": CHAPTER_INSTRUCTIONS + "\n" + "\n".join(faq)},
                       {"role": "user", "content": question}]  # chapter 07's ask(question)
    grounded = PROMPTS["grounded"](question, faq)
    assert grounded[0]["content"].startswith(GROUNDED_INSTRUCTIONS) and grounded[1] == chapter[1]
    assert retrieval_messages(question, faq, 2)[0]["content"] == (
        GROUNDED_INSTRUCTIONS + "\n" + "\n".join(retrieve(question, faq, 2)))
    assert set(PROMPTS) == {"chapter", "grounded", "retrieval k=2", "retrieval k=3"}
    assert PROMPTS["retrieval k=2"](question, faq) == retrieval_messages(question, faq, 2)


def test_a_reply_that_does_not_know_is_wrong_even_where_the_right_answer_is_no(items):
    for question in ("Can I return shoes that I have worn?", "Can I pay cash on delivery?", "Are you open on Sunday?",
                     "Can I put my shoes in the washing machine?"):
        assert not check_answer("I'm sorry, I don't know.", item_for(items, question)), question
    worn = item_for(items, "Can I return shoes that I have worn?")
    assert check_answer("No: only unworn shoes can be returned.", worn)


def test_prompt_table_says_a_small_difference_is_noise():
    timing = Timing.of([100.0, 120.0], threads=1)
    first = PromptRun("chapter", ("a",) * 30, (True,) * 6 + (False,) * 24, 0.2, binomial_se(0.2, 30), (295,) * 30,
                      timing, "fused-int8")
    second = PromptRun("retrieval k=3", ("a",) * 30, (True,) * 9 + (False,) * 21, 0.3, binomial_se(0.3, 30),
                       (127,) * 30, timing, "fused-int8")
    table = prompt_table([first, second]).splitlines()
    assert "backend: fused-int8" in table[0] and "torch threads: 1" in table[0]
    assert table[3].split()[:7] == ["retrieval", "k=3", "0.30", "±", "0.08", "+0.10", "noise"]
    with pytest.raises(ValueError, match="runs"):
        prompt_table([])


@pytest.mark.slow
def test_answer_all_replies_to_each_question_through_the_decode_loop(smol, faq, items):
    from transformers import AutoTokenizer

    from lmlab.models.pretrained import cache_dir

    tokenizer = AutoTokenizer.from_pretrained(cache_dir() / "smollm2-135m-instruct", local_files_only=True)
    run = answer_all(smol, tokenizer, "retrieval k=2", items[:2], faq, max_new_tokens=4)
    assert len(run.answers) == len(run.right) == len(run.prompt_tokens) == run.prefill.repeat == 2
    assert all(answer for answer in run.answers) and run.backend == "eager" and run.accuracy in (0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="prompt="):
        answer_all(smol, tokenizer, "everything", items[:2], faq)
