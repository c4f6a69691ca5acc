import numpy as np
import pytest
import torch

from lmlab.data.corpora import (
    BOS,
    EOS,
    UNK,
    Corpus,
    Vocab,
    batches,
    load_corpus,
    load_text_file,
    tokenize,
    tokenize_corpus,
)


def test_kjv_is_verses_without_markers(kjv_corpus):
    stats = kjv_corpus.stats()
    assert kjv_corpus.level == "word"
    assert 31_000 <= stats["documents"] <= 31_200  # the KJV has 31,102 verses
    assert 780_000 <= stats["tokens"] <= 800_000 and 12_000 <= stats["types"] <= 13_500
    assert kjv_corpus.documents[0] == "In the beginning God created the heavens and the earth."
    assert not any(ch.isdigit() for doc in kjv_corpus.documents[:2000] for ch in doc)


def test_kjv_merged_rows_are_split_into_verses(kjv_corpus):
    # The SQLite row for Genesis 31:48-49 holds both verses; verse 49 starts "And Mizpah".
    assert any(doc.startswith("And Mizpah; for he said") for doc in kjv_corpus.documents)


def test_names_are_lowercase_letters_each_once(names_corpus):
    docs = names_corpus.documents
    assert names_corpus.level == "char" and len(docs) == len(set(docs)) > 90_000
    assert docs[0] == "james" and all(d.isalpha() and d.islower() for d in docs)
    assert "unweighted" in names_corpus.source


def test_own_text_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("The cat sat.\n\nThe dog ran!\n", encoding="utf-8")
    corpus = load_corpus(path)
    assert corpus.documents == ("The cat sat.", "The dog ran!") and corpus.level == "word"
    assert corpus.stats() == {"documents": 2, "characters": 24, "tokens": 6, "types": 5}
    assert load_text_file(path, level="char").tokens("ab c") == ["a", "b", " ", "c"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such.txt"):
        load_text_file(tmp_path / "no-such.txt")


@pytest.mark.parametrize("content", ["", "   \n\n  \n"])
def test_empty_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_text_file(path)


def test_non_utf8_file_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        load_text_file(path)


def test_empty_corpus_and_bad_level_are_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        Corpus("nothing", "word", ("", "  "))
    with pytest.raises(ValueError, match="level="):
        tokenize("text", "sentence")


def test_word_tokens_are_lowercase_words():
    assert tokenize("And God said, Let there be light: and there wasn't.", "word") == [
        "and", "god", "said", "let", "there", "be", "light", "and", "there", "wasn't"]


def test_vocab_encodes_decodes_and_maps_unknowns():
    vocab = Vocab.build([["a", "b", "a"], ["c", "a"]], min_count=1)
    assert vocab.itos[:3] == (UNK, BOS, EOS) and vocab.itos[3] == "a"
    ids = vocab.encode(["a", "zzz", "c"])
    assert ids.dtype == np.int64 and ids[1] == vocab.unk_id
    assert vocab.decode(ids) == ["a", UNK, "c"]
    assert Vocab.from_dict(vocab.to_dict()) == vocab


def test_unknown_token_in_strict_mode_is_a_clear_error():
    vocab = Vocab.build([["a", "b"]])
    with pytest.raises(ValueError, match="'zzz' is not in the vocabulary"):
        vocab.encode(["a", "zzz"], strict=True)


@pytest.mark.parametrize("bad_id", [-1, 5, 1000])
def test_id_outside_vocab_is_a_clear_error(bad_id):
    vocab = Vocab.build([["a", "b"]])
    with pytest.raises(ValueError, match=f"token id {bad_id} is outside"):
        vocab.decode([bad_id])


def test_min_count_sends_rare_tokens_to_unk():
    vocab = Vocab.build([["a", "a", "b"]], min_count=2)
    assert "a" in vocab and "b" not in vocab
    with pytest.raises(ValueError, match="min_count="):
        Vocab.build([["a"]], min_count=0)
    with pytest.raises(ValueError, match="empty corpus"):
        Vocab.build([[], []])


def test_splits_are_deterministic_disjoint_and_complete(names_corpus):
    first, again = names_corpus.split(seed=0), names_corpus.split(seed=0)
    assert first == again and first != names_corpus.split(seed=1)
    sizes = [len(first[s]) for s in ("train", "valid", "test")]
    assert sum(sizes) == len(names_corpus.documents)
    assert abs(sizes[0] / sum(sizes) - 0.8) < 0.001
    assert not set(first["train"]) & set(first["test"])


@pytest.mark.parametrize("fractions", [(0.8, 0.2), (0.5, 0.5, 0.5), (1.0, 0.0, 0.0), (0.9, -0.1, 0.2)])
def test_bad_fractions_are_a_clear_error(names_corpus, fractions):
    with pytest.raises(ValueError, match="fractions="):
        names_corpus.split(fractions)


def test_vocab_comes_from_train_only(kjv_corpus):
    data = tokenize_corpus(kjv_corpus, min_count=2)
    train_tokens = {t for doc in data.documents["train"] for t in kjv_corpus.tokens(doc)}
    assert set(data.vocab.itos[3:]) <= train_tokens


def test_examples_pad_each_document_with_bos_and_end_with_eos():
    corpus = Corpus("tiny", "char", ("ab", "c"))
    # with two documents a 98/1/1 split puts both in train
    with pytest.warns(UserWarning, match="valid and test split"):
        data = tokenize_corpus(corpus, fractions=(0.98, 0.01, 0.01))
    contexts, targets = data.examples("train", 2)
    v = data.vocab
    docs = [v.decode(d) for d in data.ids["train"]]
    assert len(targets) == sum(len(d) + 1 for d in docs)
    assert v.decode(contexts[0]) == [BOS, BOS]
    assert v.itos[targets[len(docs[0])]] == EOS
    assert contexts.shape == (len(targets), 2) and contexts.dtype == np.int64
    zero_ctx, same_targets = data.examples("train", 0)
    assert zero_ctx.shape == (len(targets), 0) and (same_targets == targets).all()


def test_examples_context_is_the_previous_tokens(names_data):
    contexts, targets = names_data.examples("valid", 3)
    doc = names_data.vocab.decode(names_data.ids["valid"][0])
    assert names_data.vocab.decode(contexts[3]) == doc[0:3]
    assert names_data.vocab.itos[targets[3]] == doc[3]


def test_bad_split_and_context_size_are_clear_errors(names_data):
    with pytest.raises(ValueError, match="split="):
        names_data.examples("dev", 2)
    with pytest.raises(ValueError, match="context_size="):
        names_data.examples("train", -1)


def test_batches_are_tensors_of_the_right_size(names_data):
    contexts, targets = names_data.examples("valid", 3)
    got = list(batches(contexts, targets, batch_size=1000))
    assert all(isinstance(x, torch.Tensor) and x.dtype == torch.int64 for pair in got for x in pair)
    assert got[0][0].shape == (1000, 3) and sum(len(y) for _, y in got) == len(targets)
    shuffled = [y for _, y in batches(contexts, targets, 1000, shuffle=True, seed=1)]
    again = [y for _, y in batches(contexts, targets, 1000, shuffle=True, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(shuffled, again))


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_bad_batch_size_is_a_clear_error(names_data, bad):
    contexts, targets = names_data.examples("valid", 1)
    with pytest.raises(ValueError, match="batch_size="):
        next(batches(contexts, targets, bad))


def test_a_text_too_small_to_split_warns_naming_the_counts(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("just one line of text\n")
    with pytest.warns(UserWarning,
                      match=r"1 document\(s\).*valid and test split\(s\) are empty \(train 1, valid 0, test 0\)"):
        tokenize_corpus(load_text_file(path))
