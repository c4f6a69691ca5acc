import pytest

from lmlab.cli import main


def test_env_prints_the_environment(capsys):
    assert main(["env"]) == 0
    assert "torch threads:" in capsys.readouterr().out


def test_stats_of_own_text_file(tmp_path, capsys):
    path = tmp_path / "story.txt"
    path.write_text("once upon a time\nthe end\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"2 document\(s\)"):  # too few lines for a validation and test split
        assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0].strip(): line.split(":")[1].strip() for line in out.splitlines()[1:5]}
    assert lines == {"documents": "2", "characters": "23", "tokens": "6", "types": "6"}


def test_missing_file_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nope.txt")]) == 2
    assert "no such text file" in capsys.readouterr().err


def test_time_matmul_rejects_bad_size(capsys):
    assert main(["time-matmul", "0"]) == 2
    assert "size=0" in capsys.readouterr().err


def test_generate_streams_a_reply_and_times_it(capsys):
    assert main(["generate", "gpt-small", "and god said", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("and god said") and "tokens: first after" in out and "tokens/s" in out
    assert main(["generate", "gpt-small", "and god said", "--max-new-tokens", "4", "--batch", "3"]) == 0
    assert "batch 3" in capsys.readouterr().out


def test_generate_refuses_bad_settings_clearly(capsys):
    assert main(["generate", "gpt-small", "and god said", "--max-new-tokens", "0"]) == 2
    assert "max_new_tokens=0" in capsys.readouterr().err
    assert main(["generate", "mlp-names", "jo"]) == 2
    assert "cannot generate" in capsys.readouterr().err
    assert main(["generate", "gpt-small", "and", "--sample", "--temperature", "0"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_generate_speculatively_prints_greedy_reply_and_acceptance(capsys):
    prompt = "and god said let there be light and there was light and god said let there be"
    assert main(["generate", "gpt-large", prompt, "--max-new-tokens", "12"]) == 0
    greedy = capsys.readouterr().out.splitlines()[1]
    for method in ("prompt-lookup", "draft"):
        assert main(["generate", "gpt-large", prompt, "--max-new-tokens", "12", "--speculative", method,
                     "--draft-k", "3"]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[1] == greedy and "tokens per pass" in out and "alpha = " in out
    assert main(["generate", "gpt-small", "and", "--speculative", "beam"]) == 2
    assert "method='beam'" in capsys.readouterr().err
    assert main(["generate", "gpt-small", "and", "--speculative", "draft", "--draft-k", "0"]) == 2
    assert "k=0" in capsys.readouterr().err


def test_serve_refuses_bad_settings_before_it_binds(capsys):
    assert main(["serve", "--format", "fp4"]) == 2
    assert "format='fp4' is unknown" in capsys.readouterr().err
    assert main(["serve", "--model", "gpt-9"]) == 2
    assert "model='gpt-9' is not served" in capsys.readouterr().err
    assert main(["serve", "--model", "gpt-small", "--policy", "fifo"]) == 2
    assert "policy='fifo' is unknown" in capsys.readouterr().err
    assert main(["serve", "--port", "70000"]) == 2
    assert "port=70000" in capsys.readouterr().err


def test_vectors_trains_word2vec_and_prints_neighbours_and_analogies(capsys):
    assert main(["vectors", "gold,seven", "--dim", "16", "--epochs", "1", "--k", "3",
                 "--analogy", "go,went,come"]) == 0
    out = capsys.readouterr().out
    table = out.splitlines()
    assert any(line.startswith("gold ") for line in table) and any(line.startswith("seven ") for line in table)
    gold = next(line for line in table if line.startswith("gold "))
    assert len(gold.split(",")) == 3  # k neighbours, comma-separated
    assert "go : went :: come : ?  word2vec (lmlab): " in out


def test_vectors_refuses_unknown_words_and_malformed_analogies_before_training(capsys):
    assert main(["vectors", "kingz"]) == 2
    assert "'kingz' is not in the King James vocabulary" in capsys.readouterr().err
    assert main(["vectors", "king", "--analogy", "man,woman"]) == 2
    assert "not three words" in capsys.readouterr().err
    assert main(["vectors", "king", "--k", "0"]) == 2
    assert "k=0" in capsys.readouterr().err
