"""lmlab's command line: ``python -m lmlab COMMAND`` (or ``lmlab COMMAND`` inside the venv).

  env                      what timings here are measured on (CPU, cores, threads, torch, device)
  stats CORPUS [--level]   tokens, types and characters of "kjv", "names" or your own UTF-8 text file
  time-matmul SIZE         time_ms of a SIZE x SIZE matmul, to check this machine's timing noise
  train PRESET --out PATH  train a shipped checkpoint from scratch (presets in lmlab.train.loop.PRESETS)
  measure MODEL [--method M --value V] [--save FILE]
                           one results row: a shipped model, optionally compressed (lmlab.compress.methods.METHODS),
                           scored on its test split and timed; --save adds the row to a JSON file of rows
  generate MODEL PROMPT [--max-new-tokens N --backend B --no-cache --batch N --sample ...]
                           stream a reply from a shipped GPT or SmolLM2, then its time to first token and tokens/s;
                           --speculative prompt-lookup|draft [--draft-k K --draft MODEL]: greedy's reply in fewer
                           passes (lmlab.inference.speculative), with its acceptance rate and tokens per pass
  hardware [--threads N]   this machine's memory bandwidth and matmul GFLOP/s, and each model's decode floor
  parallel --scheme S [S ...] --model GPT [--nproc-per-node N --nnodes N --rdzv-endpoint H:P]
                           run schemes in turn under torchrun (lmlab.scale.distributed); rank 0 prints a row each:
                           ms on N ranks against the single process, speed-up, compute and communication, the largest
                           difference from the single process. Inference: data, tensor (each rank loads only its
                           weight slices; --memory-budget-mb MB refuses weights per rank above MB), pipeline
                           [--micro-batches M ...]; allreduce, sendrecv: message cost by size; training: ddp, zero,
                           fsdp [--steps N --global-batch B], gpipe, 1f1b [--micro-batches M ...]
  serve [--model M --format F --port P --max-batch N --max-queue N --policy P --api-key K --speculative ...]
                           an OpenAI-compatible chat server on 127.0.0.1 (lmlab.serving), until Ctrl-C or SIGTERM
  classify TASK --model linear|bilstm|cnn|transformer [--steps N] [--save FILE]
                           train a text classifier (lmlab.tasks.classify: names-sex, kjv-testament, kjv-books) for N
                           steps, then its test rows at batch 1 and 32 and its macro precision / recall / F1
  vectors WORDS [--dim D --epochs E --window W --negatives K --analogy A,B,C --gensim --gpt]
                           train skip-gram word2vec on the King James text (lmlab.tasks.vectors), print each word's
                           nearest neighbours (beside gensim's and the shipped GPT's, if asked) and analogies
  sweep --models M1,M2 [--methods A,B --values [METHOD=]V1,V2 --batch-sizes 1,8] --out ROWS.json
        [--engine local|ray --workers N --address ray://HOST:10001|auto --threads N --repeat N --plot PNG]
                           a grid of settings, one row each, in worker processes or on Ray (lmlab.scale.sweep);
                           resumable: run it again with the same --out to finish what is missing
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmlab.compress.experiment import run
from lmlab.data.corpora import load_corpus, load_kjv, tokenize_corpus
from lmlab.inference.decode import as_causal_lm, generate, make_step, stream, stream_speed
from lmlab.inference.sampling import SamplingParams
from lmlab.inference.speculative import METHODS as SPECULATIVE_METHODS
from lmlab.inference.speculative import expected_speedup, speculative_generate
from lmlab.measure.hardware import FORMATS, decode_floor_ms, matmul_gflops, memory_bandwidth, weight_bytes
from lmlab.measure.results import add_results, check_results_path, results_table
from lmlab.measure.runtime import check_int, describe_environment, torch_threads
from lmlab.measure.timing import format_ms, time_ms
from lmlab.models.registry import load_model, model_entry, names
from lmlab.scale.distributed import launch
from lmlab.scale.sweep import sweep_command
from lmlab.serving.launcher import serve as run_server
from lmlab.tasks.classify import MODELS as CLASSIFIERS
from lmlab.tasks.classify import load_task, measure_classifier, train_classifier
from lmlab.tasks.vectors import WordVectors, gensim_word2vec, neighbour_table, train_word2vec
from lmlab.train.loop import train_preset


@dataclass(frozen=True)
class Command:
    """One subcommand: its name and help, the function that adds its arguments, the function that runs it."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]  # None: exit code 0


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _env(args) -> None:
    print(describe_environment())


def _stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", help='"kjv", "names", or a path to a UTF-8 text file')
    parser.add_argument("--level", choices=("word", "char"), default=None, help="token level for a text file")
    parser.add_argument("--min-count", type=int, default=1, help="keep tokens seen this often in train")


def _stats(args) -> None:
    corpus = load_corpus(args.corpus, args.level)
    print(f"{corpus.name}: {corpus.source}")
    for key, value in corpus.stats().items():
        print(f"  {key:>10}: {value:,}")
    data = tokenize_corpus(corpus, min_count=args.min_count)
    sizes = {split: sum(len(d) for d in ids) for split, ids in data.ids.items()}
    print(f"  vocabulary: {len(data.vocab):,} (min_count {args.min_count}, specials included)")
    print("  tokens per split: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))


def _matmul_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("size", type=int)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=50)


def _time_matmul(args) -> None:
    if args.size < 1:
        raise ValueError(f"size={args.size} is out of range; use an integer >= 1")
    a = torch.randn(args.size, args.size)
    timing = time_ms(torch.mm, a, a, repeat=args.repeat, threads=args.threads)
    print(describe_environment(threads=timing.threads))
    print(f"{args.size}x{args.size} matmul: {timing}")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", help="one of lmlab.train.loop.PRESETS, e.g. gpt-large")
    parser.add_argument("--out", required=True, help="path without suffix, e.g. data/gpt-large")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: $LMLAB_THREADS or 1)")
    parser.add_argument("--epochs", type=float, default=None, help="override the preset's epochs")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")


def _train(args) -> None:
    card = train_preset(args.preset, args.out, seed=args.seed, threads=args.threads, epochs=args.epochs,
                        overwrite=args.overwrite)
    print(f"saved {args.out}.safetensors: {card['params']:,} parameters, "
          f"validation perplexity {card['final_valid']['perplexity']:.2f}, "
          f"trained in {card['training']['train_seconds']:.0f} s")


def _measure_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=f"a shipped model ({', '.join(names(('mlp', 'gpt', 'rnn')))}) or a KJV n-gram "
                        f"fitted here ({', '.join(names('ngram'))})")
    parser.add_argument("--method", default=None, help="a compression method from lmlab.compress.methods.METHODS")
    parser.add_argument("--value", type=float, default=None, help="the method's setting (default: its default)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--documents", type=int, default=None, help="score on the first N test documents "
                        "(default: the whole test split)")
    parser.add_argument("--repeat", type=int, default=30, help="timed repeats")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (neural models)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: $LMLAB_THREADS or 1)")
    parser.add_argument("--save", default=None, help="JSON file of results rows to add this row to")


def _measure(args) -> None:
    if args.save:
        check_results_path(args.save)  # before a minute of measuring, not after
    row = run(args.model, args.method, args.value, batch_size=args.batch_size, repeat=args.repeat,
              documents=args.documents, device=args.device, threads=args.threads)
    print(describe_environment(args.device, threads=row.threads))
    print(results_table([row]).to_string(index=False))
    if args.save:
        print(f"added to {add_results([row], args.save)}")


def _classify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="names-sex, kjv-testament or kjv-books")
    parser.add_argument("--model", default="linear", help="linear, bilstm, cnn or transformer")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: lmlab.tasks.classify.DEFAULTS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=30, help="timed repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: $LMLAB_THREADS or 1)")
    parser.add_argument("--save", default=None, help="JSON file of results rows to add the rows to")


def _classify(args) -> None:
    if args.model not in CLASSIFIERS:
        raise ValueError(f"model={args.model!r} is unknown; use one of {CLASSIFIERS}")
    if args.steps is not None:
        check_int("steps", args.steps, 1)
    if args.save:
        check_results_path(args.save)  # before training, not after
    splits = load_task(args.task).split(seed=0)
    clf = train_classifier(args.model, splits["train"], args.steps, seed=args.seed, threads=args.threads)
    rows, metrics = measure_classifier(clf, splits["test"], repeat=args.repeat, threads=args.threads)
    print(describe_environment("cpu", threads=rows[0].threads))
    print(results_table(rows).to_string(index=False))
    print(f"{args.task} {args.model}: accuracy {metrics.accuracy:.3f} ± {metrics.accuracy_se:.3f}, macro precision "
          f"{metrics.precision:.3f}, recall {metrics.recall:.3f}, F1 {metrics.f1:.3f} on {metrics.n:,} test texts")
    if args.save:
        print(f"added to {add_results(rows, args.save)}")


def _vectors_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("words", help="comma-separated words, e.g. king,gold,seven")
    parser.add_argument("--k", type=int, default=5, help="neighbours per word")
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--analogy", action="append", default=[], help="A,B,C: a is to b as c is to ? (repeatable)")
    parser.add_argument("--gensim", action="store_true", help="also train gensim's Word2Vec with the same settings")
    parser.add_argument("--gpt", action="store_true", help="also ask the shipped gpt-large's input embedding")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: $LMLAB_THREADS or 1)")


def _vectors(args) -> None:
    check_int("k", args.k, 1)
    words = [w.strip().lower() for w in args.words.split(",") if w.strip()]
    questions = [tuple(q.strip().lower() for q in a.split(",")) for a in args.analogy]
    if not words:
        raise ValueError(f"words={args.words!r} names no word; give comma-separated words, e.g. king,gold")
    bad = [a for a, q in zip(args.analogy, questions) if len(q) != 3 or not all(q)]
    if bad:
        raise ValueError(f"--analogy {bad[0]!r} is not three words A,B,C (a is to b as c is to ?)")
    data = tokenize_corpus(load_kjv(), min_count=2)
    unknown = [w for w in words + [w for q in questions for w in q] if w not in data.vocab]
    if unknown:  # before the seconds of training, not after
        raise ValueError(f"word {unknown[0]!r} is not in the King James vocabulary (words seen twice or more)")
    settings = dict(dim=args.dim, window=args.window, negatives=args.negatives, epochs=args.epochs, seed=args.seed)
    with torch_threads(args.threads) as used:
        sets = {"word2vec (lmlab)": train_word2vec(data, **settings)}
    if args.gensim:
        sets["gensim"] = gensim_word2vec(data, **settings)
    if args.gpt:
        sets["gpt-large embedding"] = WordVectors.from_gpt(load_model("gpt-large")[0])
    print(describe_environment("cpu", threads=used))
    print(", ".join(f"{name}: trained in {wv.train_seconds:.1f} s" for name, wv in sets.items() if wv.train_seconds))
    print(neighbour_table(sets, words, k=args.k).to_string())
    for a, b, c in questions:
        for name, wv in sets.items():
            print(f"{a} : {b} :: {c} : ?  {name}: " + ", ".join(w for w, _ in wv.analogy(a, b, c, args.k)))


def _causal_lm(name: str):
    """A shipped GPT by name, or "smollm2", as a decode loop; ValueError for anything else."""
    gpts = names("gpt")
    if name not in names("llm") + gpts:
        raise ValueError(f"model={name!r} cannot generate; use smollm2 or one of {gpts}")
    model, tokenizer = load_model(name)
    if model_entry(name).kind == "llm":
        return as_causal_lm(model, tokenizer, name="SmolLM2-135M")
    return as_causal_lm(model, name=name)


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="smollm2, or a shipped GPT: gpt-small, gpt-medium or gpt-large")
    parser.add_argument("prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--backend", default="eager", help="eager, compile, onnx, onnx-int8, or (SmolLM2) the fused "
                        "graph: fused, fused-int8, fused-int4")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every step")
    parser.add_argument("--batch", type=int, default=1, help="decode the prompt this many times in one batch")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: $LMLAB_THREADS or 1)")
    parser.add_argument("--speculative", default=None, help=f"greedy, speculatively: one of {SPECULATIVE_METHODS}")
    parser.add_argument("--draft-k", type=int, default=4, help="tokens drafted per target pass")
    parser.add_argument("--draft", default=None, help="draft model for --speculative draft: a shipped GPT "
                        "(default gpt-small; for smollm2 its own onnx-int8 step)")


def _generate(args) -> None:
    check_int("batch", args.batch, 1)
    lm = _causal_lm(args.model)
    if args.speculative is not None:
        _speculative(args, lm)
        return
    sampling = SamplingParams(True, args.temperature, args.top_k, args.top_p, args.seed) if args.sample \
        else SamplingParams.greedy()
    options = dict(sampling=sampling, cache=not args.no_cache, backend=args.backend, threads=args.threads)
    print(describe_environment("cpu", threads=args.threads))
    if args.batch == 1:
        print(args.prompt, end="", flush=True)
        pieces = list(_echo(stream(lm, args.prompt, args.max_new_tokens, **options)))
        print()
        ttft_ms, rate = stream_speed(pieces)
        print(f"{len(pieces)} tokens: first after {format_ms(ttft_ms).strip()}, then {rate:.1f} tokens/s")
    else:
        out = generate(lm, [args.prompt] * args.batch, args.max_new_tokens, **options)
        print(args.prompt + out.texts[0])
        print(f"batch {args.batch}: first tokens after {format_ms(out.ttft_ms).strip()}, then "
              f"{out.tokens_per_s:.1f} tokens/s for the batch, {format_ms(out.decode_ms_per_token).strip()} per step")


def _speculative(args, lm) -> None:
    """Greedy-decode the prompt speculatively; print the reply, the speculation's counts, formula and timing."""
    if args.sample or args.no_cache or args.batch != 1:
        raise ValueError("--speculative decodes one prompt greedily with the cache; drop --sample, --no-cache "
                         "and --batch")
    draft = None
    if args.speculative == "draft":
        if args.draft is None and args.model in names("llm"):
            draft = make_step(lm, "onnx-int8", args.threads)
        else:
            draft = _causal_lm(args.draft or "gpt-small")
    print(describe_environment("cpu", threads=args.threads))
    out = speculative_generate(lm, args.prompt, args.max_new_tokens, method=args.speculative, draft=draft,
                               k=args.draft_k, backend=args.backend, threads=args.threads)
    print(args.prompt + out.text)
    print(f"{len(out.tokens)} tokens in {out.target_passes} target passes after the prefill: "
          f"{out.tokens_per_pass:.2f} tokens per pass, {out.tokens_per_s:.1f} tokens/s; {out.accepted} of "
          f"{out.drafted} drafted tokens accepted (alpha = {out.acceptance_rate:.2f})")
    if out.drafted:
        print(f"formula at this alpha: E = (1 - a^(k+1)) / (1 - a) = {out.expected_tokens_per_pass():.2f} tokens per "
              f"pass, speed-up E / (k c + 1) = {expected_speedup(out.acceptance_rate, out.k, out.draft_cost):.2f} "
              f"with draft cost c = {out.draft_cost:.2f}")


def _echo(pieces):
    for piece in pieces:
        print(piece.text, end="", flush=True)
        yield piece


def _threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None)


def _hardware(args) -> None:
    bandwidth, peak = memory_bandwidth(args.threads), matmul_gflops(threads=args.threads)
    print(describe_environment("cpu", threads=bandwidth.threads))
    print(f"memory bandwidth: {bandwidth}\nmatrix multiply: {peak}")
    for name in ("gpt-large", "smollm2"):
        model = _causal_lm(name).source
        floors = ", ".join(f"{fmt} {decode_floor_ms(weight_bytes(model, fmt), bandwidth.read_gbs):.3g} ms"
                           for fmt in FORMATS)
        print(f"decode floor of {name} (weights / read bandwidth): {floors}")


def _parallel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheme", nargs="+", default=["data"], help="one or more, run in turn: data, tensor, "
                        "pipeline (inference); allreduce, sendrecv (message cost by size); ddp, zero (ZeRO-1), fsdp "
                        "(FSDP2), gpipe, 1f1b (training)")
    parser.add_argument("--model", default="gpt-small",
                        help="a shipped GPT (gpt-small, gpt-medium, gpt-large) or smollm2 (data and tensor only)")
    parser.add_argument("--nproc-per-node", type=int, default=2, help="ranks (processes) on each machine")
    parser.add_argument("--nnodes", type=int, default=1, help="machines; above 1 needs --rdzv-endpoint")
    parser.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the rendezvous, as torchrun defines it")
    parser.add_argument("--batch-size", type=int, default=32, help="documents per batch")
    parser.add_argument("--documents", type=int, default=None, help="data: score the first N test documents only")
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[4], help="pipeline micro-batches: one "
                        "count, or several (a row each)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank (default: 1)")
    parser.add_argument("--save", default=None, help="rank 0 writes the row(s) to this JSON file")
    parser.add_argument("--steps", type=int, default=None, help="ddp, zero, fsdp: global batches trained (default 6)")
    parser.add_argument("--global-batch", type=int, default=None, help="ddp, zero, fsdp: documents per step, all "
                        "ranks together (default 32)")
    parser.add_argument("--memory-budget-mb", type=float, default=None,
                        help="tensor: refuse a GPT whose weights per rank exceed this many MB (sharded loading)")


def _parallel(args) -> int:
    return launch(args.scheme, args.model, args.nproc_per_node, nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint,
                  batch_size=args.batch_size, documents=args.documents, micro_batches=args.micro_batches,
                  repeat=args.repeat, threads=args.threads, save=args.save, steps=args.steps,
                  global_batch=args.global_batch, memory_budget_mb=args.memory_budget_mb)


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2", help="smollm2 (SmolLM2-135M-Instruct), gpt-small, gpt-medium "
                        "or gpt-large")
    parser.add_argument("--format", default="float32", help="float32, onnx, int8, pruned, or (SmolLM2) the fused "
                        "graph: fused, fused-int8, fused-int4")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=8, help="most requests decoded together")
    parser.add_argument("--max-queue", type=int, default=64, help="most requests waiting; beyond it: HTTP 429")
    parser.add_argument("--policy", default="continuous", help="continuous, static or sequential batching")
    parser.add_argument("--prefix-cache", type=int, default=0, help="prefix cache (0: off): token blocks kept (fused "
                        "formats), or declared prompt prefixes kept (the others)")
    parser.add_argument("--chunk-tokens", type=int, default=None, help="fused formats: prompt tokens prefilled per "
                        "engine round (0: whole prompts; default 32)")
    parser.add_argument("--cache-tokens", type=int, default=None, help="fused formats: the KV cache's budget in "
                        "positions, all requests together (default: every slot full)")
    parser.add_argument("--reply-cache", type=int, default=0, help="greedy replies kept for repeated prompts (0: off)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: "
                        "$LMLAB_API_KEY, else no key)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: $LMLAB_THREADS or 1)")
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000)
    parser.add_argument("--prune-fraction", type=float, default=0.3, help="MLP units removed for --format pruned")
    parser.add_argument("--speculative", default=None, help="prompt-lookup: speculate while one greedy request "
                        "is alone in the engine (same tokens, fewer passes)")
    parser.add_argument("--draft-k", type=int, default=4, help="tokens drafted per pass with --speculative")


def _serve(args) -> None:
    run_server(args.model, args.format, host=args.host, port=args.port, max_batch=args.max_batch,
               max_queue=args.max_queue, policy=args.policy, prefix_cache=args.prefix_cache,
               reply_cache=args.reply_cache, api_key=args.api_key, threads=args.threads,
               max_body_bytes=args.max_body_bytes, prune_fraction=args.prune_fraction,
               speculative=args.speculative, draft_k=args.draft_k, chunk_tokens=args.chunk_tokens,
               cache_tokens=args.cache_tokens)


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, help="comma-separated shipped models, e.g. mlp-names,gpt-small")
    parser.add_argument("--methods", default="", help="comma-separated methods of lmlab.compress.methods.METHODS")
    parser.add_argument("--values", action="append", default=None, help="settings for every method ('8,4') or one "
                        "('quantize-channel=8,4'; repeat the flag); default: a few points of each method's range")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes to time (default: 1)")
    parser.add_argument("--no-baseline", action="store_true", help="leave out each model's uncompressed row")
    parser.add_argument("--documents", type=int, default=None, help="score on the first N test documents "
                        "(default: the whole test split)")
    parser.add_argument("--out", required=True, help="JSON rows file; an unfinished sweep there is resumed")
    parser.add_argument("--engine", default="local", help="local (worker processes) or ray")
    parser.add_argument("--workers", type=int, default=1, help="settings at once: local processes, or Ray actors "
                        "(each loads a model once and keeps it; on a cluster at --address too)")
    parser.add_argument("--address", default=None, help="an existing Ray cluster: auto or ray://HOST:10001")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per task (default: 1)")
    parser.add_argument("--repeat", type=int, default=30, help="timed repeats per setting")
    parser.add_argument("--plot", default=None, help="save the trade-off plot as this new PNG file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# The subcommands, in the order ``python -m lmlab --help`` lists them.
COMMANDS = (
    Command("env", "print what timings are measured on", _no_arguments, _env),
    Command("stats", "corpus statistics", _stats_arguments, _stats),
    Command("time-matmul", "time a square matmul with time_ms", _matmul_arguments, _time_matmul),
    Command("train", "train a preset from scratch and save it as safetensors + JSON", _train_arguments, _train),
    Command("measure", "score and time a shipped model, optionally compressed", _measure_arguments, _measure),
    Command("classify", "train and measure a text classifier (lmlab.tasks.classify)", _classify_arguments,
            _classify),
    Command("vectors", "train word2vec on the KJV and print neighbours (lmlab.tasks.vectors)", _vectors_arguments,
            _vectors),
    Command("generate", "stream a reply, then its TTFT and tokens/s (lmlab.inference.decode)", _generate_arguments,
            _generate),
    Command("hardware", "memory bandwidth, matmul GFLOP/s and decode floors", _threads_argument, _hardware),
    Command("parallel", "data, tensor or pipeline parallel inference, or DDP/ZeRO/FSDP training, under torchrun",
            _parallel_arguments, _parallel),
    Command("serve", "an OpenAI-compatible chat server with continuous batching", _serve_arguments, _serve),
    Command("sweep", "a grid of models x methods x settings, one results row each", _sweep_arguments,
            sweep_command),
)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` with every subcommand of ``COMMANDS``, run the chosen one, and return its exit code.

    A ValueError, FileNotFoundError or FileExistsError is printed as ``lmlab: message`` with exit code 2.
    """
    parser = argparse.ArgumentParser(prog="lmlab", description="The Millisecond LM Lab")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_arguments(commands.add_parser(command.name, help=command.help))
    args = parser.parse_args(argv)
    chosen = next(command for command in COMMANDS if command.name == args.command)
    try:
        return chosen.run(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        message = str(err).replace("pass overwrite=True", "add --overwrite") if args.command == "train" else err
        print(f"lmlab: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
