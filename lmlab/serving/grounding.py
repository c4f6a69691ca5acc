"""The shop assistant on its own task: does a reply agree with the FAQ it was given, and which prompt helps it?

Introduced for notebooks/07_realtime_pipeline.ipynb, whose assistant answers from data/shop-faq.txt.

- **The evaluation set** (data/shop-faq-eval.json, ``load_faq_eval``): three customer questions per FAQ line, each
  with the patterns a right reply must contain and must not contain. A reply is right when every ``must`` pattern
  and no ``must_not`` pattern matches it (``check_answer``); the accuracy over n questions carries its binomial
  standard error √(p (1 − p) / n) (``faq_accuracy``), so a difference inside it is noise.
- **Retrieval** (``retrieve``): the k FAQ lines that score highest for the question under BM25 over lowercased,
  lightly stemmed words without stopwords. For a line d and the question's words w,
  score(d) = Σ_w idf(w) · f(w, d) (k₁ + 1) / (f(w, d) + k₁ (1 − b + b |d| / avgdl)),
  idf(w) = ln(1 + (N − n(w) + 0.5) / (n(w) + 0.5)): a rare word that the line repeats counts most.
- **The prompts** (``PROMPTS``): chapter 07's (its instructions and every FAQ line), a grounded instruction with
  every line (answer only from the FAQ; say so when it does not tell), and the grounded instruction with only the
  k = 2 or 3 retrieved lines: a shorter prompt, so a shorter prefill.
- **The measurement** (``answer_all``, ``compare_prompts``, ``prompt_table``): greedy replies to every question
  through lmlab's decode loop, with the prompt's token count and the prefill's milliseconds (``Generation.ttft_ms``);
  each prompt's accuracy against the chapter's by the paired rule of ``lmlab.measure.stats.compare`` (the same
  questions, each one a document).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.shipped import DATA_DIR
from lmlab.inference.decode import CausalLM, generate, make_step
from lmlab.inference.step import DecodeStep
from lmlab.measure.runtime import check_int, describe_environment
from lmlab.measure.stats import binomial_se, compare
from lmlab.measure.timing import Timing, format_ms
from lmlab.serving.served import chat_template_ids

FAQ_PATH = DATA_DIR / "shop-faq.txt"
EVAL_PATH = DATA_DIR / "shop-faq-eval.json"
CHAPTER_INSTRUCTIONS = "You are the customer service assistant of Bluebird Shoes. Answer in one or two sentences."
GROUNDED_INSTRUCTIONS = ("You are the customer service assistant of Bluebird Shoes. Answer in one or two sentences, "
                         "using only the FAQ below. If the FAQ does not say, answer that you do not know.")
# Words that carry no topic in a customer's question (BM25 would still weigh them by rarity)
STOPWORDS = frozenset(
    "a an the i me my you your we our us it its is are am was be been do does did can could will would should "
    "to of for in on at by with from and or if that this there what which who when where how much many any "
    "have has had not no yes".split())
BM25_K1, BM25_B = 1.5, 0.75  # the usual constants: term-frequency saturation, length normalization


@dataclass(frozen=True)
class FaqItem:
    """One question of the evaluation set: the FAQ line that answers it and what a right reply must (not) say."""

    topic: str
    faq_line: int  # index into the FAQ's non-empty lines (``load_faq``); line 0 is the title
    question: str
    must: tuple[str, ...]  # regular expressions, case-insensitive: every one must match
    must_not: tuple[str, ...]  # none may match


def load_faq(path: str | Path = FAQ_PATH) -> list[str]:
    """Return the FAQ's non-empty lines, stripped, as chapter 07 reads them (line 0 is the title)."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_faq_eval(path: str | Path = EVAL_PATH) -> list[FaqItem]:
    """Load the evaluation set: ``items`` of data/shop-faq-eval.json as ``FaqItem`` (its ``about`` says how it was
    made). Raises ValueError for an item with no pattern at all or with a pattern that does not compile."""
    items = []
    for n, raw in enumerate(json.loads(Path(path).read_text(encoding="utf-8"))["items"]):
        item = FaqItem(raw["topic"], int(raw["faq_line"]), raw["question"], tuple(raw["must"]),
                       tuple(raw["must_not"]))
        if not item.must and not item.must_not:
            raise ValueError(f"item {n} ({item.question!r}) has no pattern; give it a must or a must_not")
        for pattern in item.must + item.must_not:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"item {n} has pattern {pattern!r}, which does not compile: {error}") from error
        items.append(item)
    return items


def check_answer(answer: str, item: FaqItem) -> bool:
    """Return whether ``answer`` is right for ``item``: every ``must`` pattern and no ``must_not`` pattern matches.

    Patterns are Python regular expressions searched case-insensitively anywhere in the reply.
    """
    found = [re.search(pattern, answer, re.IGNORECASE) is not None for pattern in item.must]
    barred = [re.search(pattern, answer, re.IGNORECASE) is not None for pattern in item.must_not]
    return all(found) and not any(barred)


def faq_accuracy(answers: Sequence[str], items: Sequence[FaqItem]) -> tuple[float, float]:
    """Return (accuracy, standard error) of ``answers[i]`` to ``items[i]``: p = right / n, se = √(p (1 − p) / n).

    Raises ValueError when the two lists differ in length or are empty.
    """
    if len(answers) != len(items):
        raise ValueError(f"answers has {len(answers)} replies and items {len(items)} questions; give one per item")
    if not items:
        raise ValueError("items is empty; an accuracy needs at least one question")
    accuracy = sum(check_answer(a, item) for a, item in zip(answers, items)) / len(items)
    return accuracy, binomial_se(accuracy, len(items))


def tokens(text: str) -> list[str]:
    """Split ``text`` into lowercased words without stopwords, each lightly stemmed (orders → order, working →
    work, returned → return)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return [_stem(w) for w in words if w not in STOPWORDS]


def _stem(word: str) -> str:
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[:-len(suffix)]
    return word[:-1] if word.endswith("s") and not word.endswith("ss") and len(word) > 3 else word


def retrieve(question: str, faq_lines: Sequence[str], k: int) -> list[str]:
    """Return the ``k`` lines of ``faq_lines`` with the highest BM25 score for ``question``, best first.

    score(d) = Σ_{w in question} idf(w) · f(w, d) (k₁ + 1) / (f(w, d) + k₁ (1 − b + b |d| / avgdl)), with
    idf(w) = ln(1 + (N − n(w) + 0.5) / (n(w) + 0.5)), k₁ = 1.5, b = 0.75 over ``tokens``; ties keep FAQ order.
    Raises ValueError for empty ``faq_lines``, a blank ``question``, or k outside [1, len(faq_lines)].
    """
    if not faq_lines:
        raise ValueError("faq_lines is empty; give at least one line to retrieve from")
    if not question.strip():
        raise ValueError(f"question={question!r} is blank; give the customer's question")
    check_int("k", k, 1, len(faq_lines))
    documents = [Counter(tokens(line)) for line in faq_lines]
    lengths = [sum(d.values()) for d in documents]
    average = sum(lengths) / len(lengths) or 1.0
    scores = []
    for document, length in zip(documents, lengths):
        score = 0.0
        for word in tokens(question):
            containing = sum(word in d for d in documents)
            idf = math.log(1 + (len(documents) - containing + 0.5) / (containing + 0.5))
            f = document[word]
            score += idf * f * (BM25_K1 + 1) / (f + BM25_K1 * (1 - BM25_B + BM25_B * length / average))
        scores.append(score)
    best = sorted(range(len(faq_lines)), key=lambda i: (-scores[i], i))[:k]
    return [faq_lines[i] for i in best]


def faq_messages(question: str, faq_lines: Sequence[str], instructions: str = CHAPTER_INSTRUCTIONS) -> list[dict]:
    """Return chat messages: a system message (``instructions``, then each FAQ line) and the customer's question.

    With the defaults this is chapter 07's ``ask(question)``.
    """
    return [{"role": "system", "content": instructions + "\n" + "\n".join(faq_lines)},
            {"role": "user", "content": question}]


def grounded_messages(question: str, faq_lines: Sequence[str]) -> list[dict]:
    """Return ``faq_messages`` with the grounded instruction: answer only from the FAQ, or say you do not know."""
    return faq_messages(question, faq_lines, GROUNDED_INSTRUCTIONS)


def retrieval_messages(question: str, faq_lines: Sequence[str], k: int = 3) -> list[dict]:
    """Return the grounded messages with only the ``k`` FAQ lines that ``retrieve`` ranks first.

    Raises ValueError as ``retrieve`` does.
    """
    return faq_messages(question, retrieve(question, faq_lines, k), GROUNDED_INSTRUCTIONS)


# The prompts compared: name -> (question, FAQ lines) -> messages
PROMPTS: dict[str, Callable[[str, Sequence[str]], list[dict]]] = {
    "chapter": faq_messages, "grounded": grounded_messages,
    "retrieval k=2": lambda question, faq_lines: retrieval_messages(question, faq_lines, 2),
    "retrieval k=3": retrieval_messages}


@dataclass(frozen=True)
class PromptRun:
    """The replies of one prompt to every question, and what they cost."""

    prompt: str
    answers: tuple[str, ...]
    right: tuple[bool, ...]
    accuracy: float
    accuracy_se: float
    prompt_tokens: tuple[int, ...]
    prefill: Timing  # one sample per question: the prefill and the pick of the first token (TTFT)
    backend: str  # the decode step's: "eager", "fused-int8", ...


def answer_all(lm: CausalLM, tokenizer, prompt: str, items: Sequence[FaqItem], faq_lines: Sequence[str],
               step: DecodeStep | None = None, max_new_tokens: int = 48, threads: int | None = 1) -> PromptRun:
    """Answer every question of ``items`` greedily with the messages ``PROMPTS[prompt]`` builds; score the replies.

    Each reply runs through ``lmlab.inference.decode.generate`` (``step`` from ``make_step``; None: eager) on
    ``tokenizer``'s chat template ids; its prefill ms is the generation's TTFT. Raises ValueError for an unknown prompt,
    an empty ``items``, or as ``generate`` does.
    """
    if prompt not in PROMPTS:
        raise ValueError(f"prompt={prompt!r} is unknown; use one of {tuple(PROMPTS)}")
    if not items:
        raise ValueError("items is empty; give at least one question")
    answers, counts, prefill_ms, backends = [], [], [], set()
    for item in items:
        ids = chat_template_ids(tokenizer, PROMPTS[prompt](item.question, faq_lines), generation=True)
        generation = generate(lm, ids, max_new_tokens, step=step, threads=threads)
        answers.append(generation.text.strip())
        counts.append(len(ids))
        prefill_ms.append(generation.ttft_ms)
        backends.add(generation.backend)
    accuracy, se = faq_accuracy(answers, items)
    return PromptRun(prompt, tuple(answers), tuple(check_answer(a, i) for a, i in zip(answers, items)), accuracy,
                     se, tuple(counts), Timing.of(prefill_ms, threads=threads), "/".join(sorted(backends)))


def compare_prompts(lm: CausalLM, tokenizer, prompts: Sequence[str] = tuple(PROMPTS), backend: str = "fused-int8",
                    max_new_tokens: int = 48, threads: int = 1) -> list[PromptRun]:
    """Answer the evaluation set with each of ``prompts`` (names in ``PROMPTS``) on one decode step of ``backend``.

    One warm-up reply first (the step's first call builds its buffers), then ``answer_all`` per prompt, greedy, on
    ``threads`` torch threads. Raises ValueError for an unknown prompt or backend.
    """
    unknown = [name for name in prompts if name not in PROMPTS]
    if unknown:
        raise ValueError(f"prompts={unknown!r} are unknown; use names from {tuple(PROMPTS)}")
    faq_lines, items = load_faq(), load_faq_eval()
    step = make_step(lm, backend, threads)
    answer_all(lm, tokenizer, prompts[0], items[:1], faq_lines, step, max_new_tokens, threads)  # warm-up
    return [answer_all(lm, tokenizer, name, items, faq_lines, step, max_new_tokens, threads) for name in prompts]


def prompt_table(runs: Sequence[PromptRun]) -> str:
    """Return the runs as a text table: accuracy ± SE, the paired difference from the first run and whether it is
    noise, the median (p90) prefill, the median prompt tokens; under the environment line.

    Δ and its interval come from ``lmlab.measure.stats.compare`` on the per-question right/wrong (paired).
    Raises ValueError for no runs.
    """
    if not runs:
        raise ValueError("runs is empty; give at least one PromptRun")
    threads = runs[0].prefill.threads
    lines = [describe_environment("cpu", threads) + f" | backend: {runs[0].backend}, greedy",
             f"{'prompt':<14} {'accuracy ± SE':>15} {'Δ vs ' + runs[0].prompt:>14} {'verdict':>10} "
             f"{'prefill median':>15} {'p90':>12} {'prompt tokens':>14}"]
    for run in runs:
        delta = compare([float(r) for r in run.right], [float(r) for r in runs[0].right],
                        tokens=[1.0] * len(run.right))
        verdict = "noise" if delta.within_noise else "real"
        lines.append(f"{run.prompt:<14} {run.accuracy:7.2f} ± {run.accuracy_se:4.2f} {delta.delta:+14.2f} "
                     f"{verdict if run is not runs[0] else '':>10} {format_ms(run.prefill.median_ms, 12)} "
                     f"{format_ms(run.prefill.p90_ms, 9)} {sorted(run.prompt_tokens)[len(run.prompt_tokens) // 2]:>14}")
    return "\n".join(lines)
