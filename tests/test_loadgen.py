"""The load generator: arrivals and serving metrics on hand-built records, then the client on a real server."""

import math

import numpy as np
import pytest

from lmlab.measure.results import Result
from lmlab.serving import loadgen
from lmlab.serving.loadgen import (
    Budget,
    LoadReport,
    RequestRecord,
    default_bodies,
    load_plot,
    poisson_arrivals,
    run_load_sync,
    table,
)


def rec(index, sent_s, e2e_ms, status=200, ttft_ms=10.0, tokens=5, error=None, disconnected=False, itl_ms=()):
    """A hand-built record; tpot follows its definition (e2e - ttft) / (tokens - 1)."""
    tpot_ms = (e2e_ms - ttft_ms) / (tokens - 1) if tokens >= 2 else math.nan
    return RequestRecord(index=index, sent_s=sent_s, status=status, ttft_ms=ttft_ms, e2e_ms=e2e_ms,
                         completion_tokens=tokens, prompt_tokens=3, tpot_ms=tpot_ms, itl_ms=tuple(itl_ms), text="x",
                         error=error, disconnected=disconnected)


# Arrivals ---------------------------------------------------------------------------------------------


def test_arrival_gaps_have_mean_one_over_rate_and_repeat_with_the_seed():
    t = poisson_arrivals(5.0, 20_000, seed=1)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert t[0] > 0 and np.all(gaps > 0)
    assert gaps.mean() == pytest.approx(0.2, rel=0.03)  # standard error of the mean is 0.7%
    assert gaps.std() == pytest.approx(0.2, rel=0.05)  # exponential: std = mean
    assert np.array_equal(t, poisson_arrivals(5.0, 20_000, seed=1))
    assert not np.array_equal(t, poisson_arrivals(5.0, 20_000, seed=2))


@pytest.mark.parametrize("kwargs, name", [
    (dict(rate_per_s=0, count=3), "rate_per_s"),
    (dict(rate_per_s=-1.0, count=3), "rate_per_s"),
    (dict(rate_per_s=math.inf, count=3), "rate_per_s"),
    (dict(rate_per_s=math.nan, count=3), "rate_per_s"),
    (dict(rate_per_s=2.0, count=0), "count"),
    (dict(rate_per_s=2.0, count=2.5), "count"),
])
def test_arrivals_refuse_bad_arguments_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        poisson_arrivals(**kwargs)


@pytest.mark.parametrize("args, kwargs, name", [
    (([], 1.0), {}, "bodies"),
    (([{}], 0.0), {}, "rate_per_s"),
    (([{}], math.nan), {}, "rate_per_s"),
    (([{}], 1.0), dict(timeout_s=0), "timeout_s"),
    (([{}], 1.0), dict(timeout_s=math.inf), "timeout_s"),
    (([{}], 1.0), dict(disconnect_after_tokens={1: 2}), "disconnect_after_tokens"),
    (([{}], 1.0), dict(disconnect_after_tokens={0: -1}), "disconnect_after_tokens"),
])
def test_run_load_refuses_bad_arguments_by_name_and_sync_reraises(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        run_load_sync("http://127.0.0.1:9", *args, **kwargs)


def test_default_bodies_stream_greedy_with_usage():
    bodies = default_bodies(["hi", "yo"], "gpt-small", 8, system="Be brief.")
    assert len(bodies) == 2 and bodies[0]["model"] == "gpt-small" and bodies[0]["max_tokens"] == 8
    assert bodies[0]["temperature"] == 0 and bodies[0]["stream"] is True
    assert bodies[0]["stream_options"] == {"include_usage": True}
    assert bodies[1]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "yo"}]
    assert default_bodies(["hi"], "m", 1)[0]["messages"] == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="questions"):
        default_bodies([], "m", 8)
    with pytest.raises(ValueError, match="max_tokens"):
        default_bodies(["hi"], "m", 0)


# Metrics on hand-built records -------------------------------------------------------------------------


def test_percentiles_over_completed_records_only():
    records = [rec(i, 0.0, e2e) for i, e2e in enumerate([100.0, 200.0, 300.0, 400.0, 500.0])]
    records += [rec(5, 0.0, 9000.0, status=429, error="HTTP 429: full"), rec(6, 0.0, 7000.0, disconnected=True)]
    report = LoadReport.from_records(records, 2.0)
    assert len(report.completed) == 5 and report.errors == 1
    assert report.percentiles("e2e_ms") == pytest.approx({50: 300.0, 90: 460.0, 99: 496.0})  # linear
    assert report.percentiles("ttft_ms", (50,)) == {50: 10.0}
    with pytest.raises(ValueError, match="metric"):
        report.percentiles("latency")


def test_inter_token_percentiles_pool_every_gap_of_completed_requests():
    records = [rec(0, 0.0, 100.0, itl_ms=(10.0, 20.0)), rec(1, 0.0, 100.0, itl_ms=(30.0, 40.0, 50.0)),
               rec(2, 0.0, 100.0, itl_ms=(math.nan,)), rec(3, 0.0, 100.0, itl_ms=()),
               rec(4, 0.0, 100.0, status=0, error="ReadTimeout", itl_ms=(9000.0,))]
    report = LoadReport.from_records(records, 1.0)
    # pooled gaps 10..50 (the failed request's and the nan are left out): linear interpolation
    assert report.percentiles("itl_ms", (50, 90)) == pytest.approx({50: 30.0, 90: 46.0})
    assert report.summary()["p90_itl_ms"] == pytest.approx(46.0)
    no_gaps = LoadReport.from_records([rec(0, 0.0, 50.0, tokens=1)], 1.0)
    assert math.isnan(no_gaps.percentiles("itl_ms", (90,))[90])


def test_budget_checks_ttft_tpot_and_the_pooled_inter_token_gaps():
    smooth = [rec(i, 0.1 * i, 500.0, ttft_ms=100.0, itl_ms=(90.0,) * 4) for i in range(10)]
    assert Budget().met_by(LoadReport.from_records(smooth, 1.0))
    # the same mean pace (TPOT 100 ms), but one gap in four is a 250 ms stall: p90 ITL 250 ms > 100 ms
    stalls = [rec(i, 0.1 * i, 500.0, ttft_ms=100.0, itl_ms=(50.0, 50.0, 50.0, 250.0)) for i in range(10)]
    report = LoadReport.from_records(stalls, 1.0)
    assert not Budget().met_by(report)
    assert Budget(itl_p90_ms=300.0).met_by(report) and Budget(itl_p90_ms=None).met_by(report)
    assert not Budget(ttft_p90_ms=50.0).met_by(LoadReport.from_records(smooth, 1.0))
    assert not Budget().met_by(LoadReport.from_records(smooth + [rec(10, 1.0, 5.0, status=429, error="full")], 1.0))
    assert Budget().met_by(LoadReport.from_records([rec(0, 0.0, 50.0, tokens=1)], 1.0))  # no gaps: not failed
    assert Budget().itl_p90_ms == 100.0
    for bad in (dict(itl_p90_ms=0.0), dict(itl_p90_ms=-5.0), dict(ttft_p90_ms=math.nan), dict(tokens_per_s=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Budget(**bad)


def test_a_stream_that_ends_after_its_finish_reason_is_complete_without_done():
    """transformers serve ends its stream after the usage chunk, with no data: [DONE]: the request still
    counts as completed, timed by the client's own clock."""
    p = loadgen._Progress(0, sent_s=0.0, status=200, token_s=[0.1, 0.2], pieces=["a", "b"], end_s=0.3,
                          finished=True)
    assert p.record().ok and p.record().itl_ms == pytest.approx((100.0,))


def test_mean_in_flight_and_littles_law_on_known_intervals():
    # in flight: [0, 1], [0.5, 1.5], [1, 3]  ->  ∫ N dt = 1 + 1 + 2 = 4 over T = 3 s
    records = [rec(0, 0.0, 1000.0, tokens=3), rec(1, 0.5, 1000.0, tokens=5), rec(2, 1.0, 2000.0, tokens=4)]
    report = LoadReport.from_records(records, 1.0)
    assert report.duration_s == pytest.approx(3.0)
    assert report.mean_in_flight == pytest.approx(4 / 3)
    assert report.throughput_rps == pytest.approx(1.0)
    assert report.tokens_per_s == pytest.approx(12 / 3)
    law = report.littles_law()
    assert law["mean_latency_s"] == pytest.approx(4 / 3)
    assert law["predicted"] == pytest.approx(4 / 3) and law["ratio"] == pytest.approx(1.0)
    # a request that fails after holding a slot for 3 s is in flight, but not in throughput or latency
    failed = LoadReport.from_records(records + [rec(3, 0.0, 3000.0, status=0, error="ReadTimeout")], 1.0)
    assert failed.mean_in_flight == pytest.approx(7 / 3)
    assert failed.littles_law()["ratio"] == pytest.approx(7 / 4)


def test_tpot_and_inter_token_gaps_follow_their_definitions():
    p = loadgen._Progress(0, sent_s=1.0, status=200, token_s=[1.1, 1.15, 1.25], pieces=["a", "", "b"], end_s=1.3)
    r = p.record()
    assert r.ttft_ms == pytest.approx(100.0) and r.e2e_ms == pytest.approx(300.0)
    assert r.completion_tokens == 3 and r.tpot_ms == pytest.approx(100.0)  # (300 - 100) / (3 - 1)
    assert r.itl_ms == pytest.approx((50.0, 100.0)) and r.text == "ab" and r.ok
    p.usage = {"prompt_tokens": 4, "completion_tokens": 5}  # usage, where given, counts the tokens
    assert p.record().completion_tokens == 5 and p.record().prompt_tokens == 4
    p.token_s, p.usage = [1.1], None
    assert math.isnan(p.record().tpot_ms)


def test_to_result_fields():
    report = LoadReport.from_records([rec(i, 0.1 * i, 100.0 * (i + 1), ttft_ms=5.0 * (i + 1)) for i in range(5)], 4.0)
    row = report.to_result("gpt-small served", accuracy=0.31)
    assert isinstance(row, Result)
    assert (row.technique, row.setting, row.batch_size, row.accuracy) == ("serving", "4 req/s", 1, 0.31)
    assert row.median_ms == pytest.approx(15.0) and row.p90_ms == pytest.approx(23.0)
    e2e = report.to_result("x", accuracy=0.5, metric="e2e_ms", setting="burst", threads=2)
    assert e2e.median_ms == pytest.approx(300.0) and e2e.setting == "burst" and e2e.threads == 2
    with pytest.raises(ValueError, match="metric"):
        report.to_result("x", accuracy=0.5, metric="tpot_ms")
    with pytest.raises(ValueError, match="no completed"):
        LoadReport.from_records([rec(0, 0.0, 5.0, status=429, error="full")], 1.0).to_result("x", accuracy=0.5)


def test_table_has_one_row_per_report_and_units_in_its_columns():
    reports = [LoadReport.from_records([rec(i, 0.1 * i, 100.0 + 10 * i) for i in range(4)], rate) for rate in (1, 2)]
    frame = table(reports)
    assert len(frame) == 2 and list(frame["offered_rate_per_s"]) == [1, 2]
    for column in ("completed", "errors", "throughput_rps", "tokens_per_s", "duration_s",
                   "p50_ttft_ms", "p90_tpot_ms", "p99_e2e_ms", "p99_itl_ms"):
        assert column in frame.columns
    assert reports[0].summary()["completed"] == 4


def test_load_plot_draws_latency_and_throughput_panels():
    reports = [LoadReport.from_records([rec(i, i / rate, 100.0 * rate + i) for i in range(6)], rate)
               for rate in (1.0, 2.0, 4.0, math.inf)]
    fig = load_plot(reports, title="test")
    lat_ax, tput_ax = fig.axes
    assert lat_ax.get_yscale() == "log" and "ms" in lat_ax.get_ylabel()
    assert len(lat_ax.get_lines()) == 6  # p50 and p90 of TTFT, e2e and the inter-token gap
    assert "y = x" in " ".join(t.get_text() for t in tput_ax.get_legend().get_texts())
    assert list(tput_ax.get_lines()[1].get_xdata()) == [1.0, 2.0, 4.0]  # the infinite rate is left out
    assert reports[1].arrival_rate_per_s == pytest.approx(2.0) and math.isnan(reports[3].arrival_rate_per_s)
    with pytest.raises(ValueError, match="reports"):
        load_plot([reports[-1]])


# The client against the real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    from lmlab.serving.launcher import running_server

    with running_server("gpt-small", max_batch=4, api_key="k") as running:
        yield running


def test_client_times_streams_records_errors_and_disconnects(server):
    texts = ["and god said", "blessed are the", "in the beginning", "the lord is my", "and it came to pass"]
    bodies = default_bodies(texts, "gpt-small", 8)
    bodies[2] = {**bodies[2], "max_tokens": 0}  # refused: 400 naming max_tokens
    bodies[4] = {**bodies[4], "max_tokens": 40, "ignore_eos": True}
    report = run_load_sync(server.base_url, bodies, 20.0, seed=0, timeout_s=60, api_key="k",
                           disconnect_after_tokens={4: 2})
    refused = run_load_sync(server.base_url, bodies[:1], math.inf, api_key="wrong")
    assert [r.index for r in report.records] == list(range(5))
    ok, other_ok, bad, fourth, cut = report.records
    assert ok.ok and ok.status == 200 and ok.text and 1 <= ok.completion_tokens <= 8
    assert ok.prompt_tokens == 4 and ok.server_timing["ttft_ms"] > 0
    assert 0 < ok.ttft_ms < ok.e2e_ms and other_ok.ok and fourth.ok
    assert bad.status == 400 and bad.error.startswith("HTTP 400: max_tokens=0") and not bad.ok
    assert cut.disconnected and cut.completion_tokens == 2 and cut.error is None
    assert len(report.completed) == 3 and report.errors == 1 and report.throughput_rps > 0
    assert refused.records[0].status == 401 and refused.records[0].error.startswith("HTTP 401")


def test_littles_law_holds_with_the_servers_own_count_of_requests_inside(server):
    """L sampled from the server's /health, against λW from the client's timings: two instruments, one law."""
    bodies = [{**b, "ignore_eos": True} for b in default_bodies(["and god said"] * 40, "gpt-small", 100)]
    report = run_load_sync(server.base_url, bodies, 40.0, seed=0, timeout_s=60, api_key="k", probe_s=0.01)
    law = report.littles_law()
    assert len(report.completed) == 40 and len(report.server_samples) > 20
    assert law["ratio"] == pytest.approx(1.0)  # the identity: both sides from the client
    assert law["server_ratio"] == pytest.approx(1.0, abs=0.15), law  # the check: L counted by the server
