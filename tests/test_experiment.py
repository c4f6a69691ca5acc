"""One experiment, one results row: the named methods, their ranges, and the command line that runs them."""

import json

import pytest
import torch

from lmlab.cli import main
from lmlab.compress.experiment import run
from lmlab.compress.methods import METHODS
from lmlab.compress.quantize import model_bytes
from lmlab.data.shipped import DATA_DIR
from lmlab.models.checkpoints import load_checkpoint
from lmlab.models.lm import evaluate
from lmlab.models.registry import load_model


def test_an_uncompressed_row_is_scored_on_the_whole_test_split():
    row = run("mlp-names", repeat=3)
    model, data = load_model("mlp-names")
    scores = evaluate(model, *data.examples("test", model.context_size))
    assert row.accuracy == pytest.approx(scores["accuracy"]) and row.perplexity == pytest.approx(scores["perplexity"])
    assert row.technique == "uncompressed" and row.corpus == "names test" and row.setting == ""
    assert row.size_mb == pytest.approx(model.size_bytes() / 1e6) and row.median_ms > 0
    assert row.predictions == len(data.examples("test", 0)[1]) and not row.simulated


def test_a_slice_is_scored_named_and_ngrams_take_no_method():
    from lmlab.models.ngram import NGramModel

    row = run("ngram-3", repeat=3, documents=20)
    model, data = load_model("gpt-small")
    verses = data.head("test", 20)
    contexts, targets = verses.examples("test", 2)
    expected = evaluate(NGramModel.fit(data, n=3), contexts, targets)
    assert row.corpus == "kjv test[:20]" and row.predictions == len(targets)
    assert row.accuracy == pytest.approx(expected["accuracy"])
    assert row.perplexity == pytest.approx(expected["perplexity"])
    gpt = run("gpt-small", repeat=3, documents=20)
    assert gpt.predictions == len(targets) and gpt.perplexity == pytest.approx(
        model.evaluate_documents(verses, "test")["perplexity"])
    with pytest.raises(ValueError, match="model='ngram-3' is an n-gram and takes no method"):
        run("ngram-3", "quantize-channel", 4)
    with pytest.raises(ValueError, match="model='lstm-kjv' is recurrent"):
        run("lstm-kjv", "quantize-channel", 4)  # refused before loading: nn.LSTM's gates would stay float32
    with pytest.raises(ValueError, match="documents=0"):
        run("gpt-small", documents=0)


def test_fake_quantization_and_masks_are_marked_simulated_and_real_formats_are_not():
    assert run("mlp-names", "quantize-channel", 4, repeat=3).simulated
    assert run("mlp-names", "magnitude-global", 0.5, repeat=3).simulated
    assert not run("mlp-names", "mlp-units", 0.5, repeat=3).simulated
    assert {name for name, m in METHODS.items() if m.simulated} == {
        "quantize-channel", "quantize-tensor", "quantize-group32", "quantize-step", "magnitude-global",
        "magnitude-layer", "share"}
    with pytest.raises(ValueError, match=r"value=16 is not one of bits \(32 float32, 8 int8\): use one of \(8, 32\)"):
        METHODS["onnx"].check(16)


@pytest.mark.parametrize("method, value", [("magnitude-global", 0.5), ("quantize-channel", 2)])
def test_a_simulated_row_carries_the_dense_models_time_exactly(monkeypatch, method, value):
    import lmlab.compress.experiment as experiment

    measured = []  # (distinct weight values of the model timed, its row)

    def spy(model, *args, **kwargs):
        row = real(model, *args, **kwargs)
        measured.append((len(torch.unique(torch.cat([p.detach().flatten() for p in model.parameters()]))), row))
        return row

    real = experiment.measure
    monkeypatch.setattr(experiment, "measure", spy)
    row = run("mlp-names", method, value, repeat=5)
    dense_model, _ = load_model("mlp-names")
    dense_weights = torch.cat([p.detach().flatten() for p in dense_model.parameters()])
    dense = [r for distinct, r in measured if distinct == len(torch.unique(dense_weights))]
    assert len(dense) == 1, "the uncompressed model is timed once, on the same contexts"
    assert row.median_ms == dense[0].median_ms and row.p90_ms == dense[0].p90_ms and row.simulated
    assert row.threads == dense[0].threads and row.batch_size == dense[0].batch_size


def test_a_compressed_row_names_its_setting_and_stored_size():
    row = run("mlp-names", "quantize-channel", 4, repeat=3)
    model = load_checkpoint(DATA_DIR / "mlp-names")
    assert row.technique == "quantize-channel" and row.setting == "bits 4"
    assert row.size_mb == pytest.approx(model_bytes(model, 4)["total"] / 1e6)
    assert row.accuracy < run("mlp-names", repeat=3).accuracy + 0.01


@pytest.mark.parametrize("method, value, match", [
    ("quantize-channel", 9, r"value=9 is out of range for bits; use 2 to 8"),
    ("quantize-channel", 4.5, "whole number"),
    ("magnitude-global", 1.0, "value=1.0 is out of range"),
    ("prune-everything", 0.5, "method='prune-everything' is unknown"),
])
def test_bad_settings_are_clear_errors(method, value, match):
    with pytest.raises(ValueError, match=match):
        run("mlp-names", method, value)


def test_a_device_that_is_not_one_is_a_clear_error():
    with pytest.raises(ValueError, match="device='tpu'"):
        run("gpt-small", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' asked for CUDA"):
            run("ngram-3", device="cuda")


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="model='gpt-huge' is not a shipped model"):
        run("gpt-huge")


def test_every_method_default_lies_in_its_range():
    for name, method in METHODS.items():
        assert method.check(method.value) == method.value, name


def test_command_line_adds_rows_to_a_file_and_never_drops_old_ones(tmp_path, capsys):
    rows = tmp_path / "rows.json"
    assert main(["measure", "mlp-names", "--method", "magnitude-layer", "--value", "0.5", "--repeat", "3",
                 "--save", str(rows)]) == 0
    assert main(["measure", "mlp-names", "--repeat", "3", "--save", str(rows)]) == 0
    saved = json.loads(rows.read_text())
    assert [r["technique"] for r in saved] == ["magnitude-layer", "uncompressed"]
    assert "sparsity 0.5" in capsys.readouterr().out
    assert main(["measure", "mlp-names", "--method", "share", "--value", "12"]) == 2
    assert "value=12.0 is out of range for bits" in capsys.readouterr().err


def test_measure_checks_where_it_will_save_before_measuring(tmp_path, capsys):
    from lmlab.measure.results import check_results_path

    assert main(["measure", "gpt-large", "--save", str(tmp_path)]) == 2  # a folder: refused at once, nothing measured
    assert f"path={str(tmp_path)!r} is a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not exist; create it first"):
        check_results_path(tmp_path / "missing" / "rows.json")
    notes = tmp_path / "notes.json"
    notes.write_text("my notes")
    with pytest.raises(ValueError, match="is not a JSON file of results rows"):
        check_results_path(notes)
    assert notes.read_text() == "my notes"
    assert check_results_path(tmp_path / "rows.json") == tmp_path / "rows.json"


def test_the_same_named_slice_gives_the_same_figures():
    first, again = run("gpt-small", repeat=3, documents=25), run("gpt-small", repeat=3, documents=25)
    assert (first.accuracy, first.perplexity, first.predictions, first.corpus) == (
        again.accuracy, again.perplexity, again.predictions, again.corpus) and first.corpus == "kjv test[:25]"


def test_the_notebook_slice_is_the_first_test_verses_and_is_named():
    from lmlab.data.shipped import NOTEBOOK_DOCUMENTS, notebook_slice
    from lmlab.models.registry import load_model

    _, data = load_model("gpt-small")
    part, name = notebook_slice(data)
    assert name == f"kjv test[:{NOTEBOOK_DOCUMENTS}]"
    assert len(part.ids["test"]) == NOTEBOOK_DOCUMENTS
    assert all((a == b).all() for a, b in zip(part.ids["test"], data.ids["test"]))
