import pytest

from lmlab.corpora import tokenize
from lmlab.ngram import NGramModel
from lmlab.widgets import NextTokenPanel


@pytest.fixture(scope="module")
def models(names_data):
    return {f"{n}-gram": NGramModel.fit(names_data, n=n) for n in (1, 3)}


def test_panel_predicts_and_times(models):
    panel = NextTokenPanel(models, lambda text: tokenize(text, "char"), text="jo")
    top, timing, unknown = panel.predict("jo", "3-gram")
    assert len(top) == 10 and top[0][1] >= top[-1][1] and unknown == []
    assert timing.repeat == 5 and timing.threads >= 1
    # Changing the text or the model redraws without error.
    panel.text.value = "mar"
    panel.choice.value = "1-gram"
    assert bytes(panel.chart.value).startswith(b"\x89PNG") and "1-gram" in panel.info.value


def test_panel_reports_unknown_symbols(models):
    panel = NextTokenPanel(models, lambda text: tokenize(text, "char"))
    _, _, unknown = panel.predict("jo3", "3-gram")
    assert unknown == ["3"]


def test_panel_rejects_bad_settings(models):
    with pytest.raises(ValueError, match="models is empty"):
        NextTokenPanel({}, str.split)
    with pytest.raises(ValueError, match="k="):
        NextTokenPanel(models, str.split, k=0)


def test_descent_panel_redraws_and_flags_divergence():
    from lmlab.descent import linear_data
    from lmlab.widgets import DescentPanel

    x, y = linear_data(64, seed=0)
    panel = DescentPanel(x, y, lr=0.1, batch_size=64)
    assert "batch descent" in panel.info.value and "final loss" in panel.info.value
    panel.lr.value = 1.9
    assert "diverged" in panel.info.value
    panel.batch.value = 1
    assert "stochastic" in panel.info.value
    assert bytes(panel.chart.value).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="lr="):
        DescentPanel(x, y, lr=0)
