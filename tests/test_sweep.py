"""lmlab.scale.sweep: real worker processes and a real local Ray instance on a tiny grid of the census-names MLP.

The grid (the MLP's baseline, 4-bit rounding, and head pruning, which fails on a model without attention)
runs once per engine; the tests compare and inspect those rows. Every wait is bounded.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmlab.cli import main
from lmlab.measure.results import Result, save_results
from lmlab.scale import sweep as sw

REPEAT = 2
GRID = dict(models=["mlp-names"], methods=["quantize-channel", "heads"],
            values={"quantize-channel": [4], "heads": [0.5]})
KEYS = ["mlp-names/uncompressed/batch=1", "mlp-names/quantize-channel=4/batch=1", "mlp-names/heads=0.5/batch=1"]
FOREIGN = "gpt-large/uncompressed/batch=8"  # a row from another grid, which a sweep must keep


def _row(key, error=None, **values):
    row = dict.fromkeys(sw.RESULT_FIELDS)
    row.update(key=key, name=key.split("/")[0], technique="uncompressed", error=error, **values)
    return row


def _write(path, rows):
    path.write_text(json.dumps({"kind": sw.KIND, "version": sw.VERSION, "rows": rows}))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The grid on 2 local worker processes, into a rows file that already holds a failed attempt at the
    baseline (to be retried) and a row of another grid (to be kept)."""
    folder = tmp_path_factory.mktemp("local")
    out, log = folder / "rows.json", folder / "tasks.log"
    _write(out, [_row(KEYS[0], error="RuntimeError: an earlier attempt died"), _row(FOREIGN, accuracy=0.5)])
    os.environ[sw.LOG_ENV] = str(log)
    try:
        rows = sw.sweep(**GRID, out=out, engine="local", workers=2, repeat=REPEAT, progress=False)
    finally:
        del os.environ[sw.LOG_ENV]
    return rows, out, log.read_text().split()


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    """One local Ray instance for the module, started as the sweep starts it, shut down at the end."""
    import ray

    printed = tmp_path_factory.mktemp("ray") / "printed.txt"
    saved = [os.dup(1), os.dup(2)]
    with open(printed, "wb") as sink:  # catch what Ray's start prints, at the file descriptors
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            started = sw.start_ray(workers=2)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    try:
        assert started
        yield ray, printed.read_text()
    finally:
        ray.shutdown()


def test_local_and_ray_engines_give_the_same_rows(local_run, ray_instance, tmp_path):
    rows = sw.sweep(**GRID, out=tmp_path / "ray.json", engine="ray", workers=2, repeat=REPEAT, progress=False)
    assert ray_instance[0].is_initialized()  # the sweep used the open connection and left it open
    assert [r["key"] for r in rows] == [r["key"] for r in local_run[0]] == KEYS
    for ours, theirs in zip(rows, local_run[0]):
        for name in ("accuracy", "perplexity", "size_mb", "params", "setting", "threads", "error"):
            assert ours[name] == theirs[name], (ours["key"], name)
    assert {r["key"] for r in sw.load_rows(tmp_path / "ray.json")} == set(KEYS)


# Five compressed settings of the MLP, then its baseline (which runs on a model methods were applied to), each
# scored on the first 300 test names (a few ms each: the test times the workers, not the scoring).
CACHED_GRID = [sw.Setting("mlp-names", method, value, documents=300) for method, value in
               [("quantize-channel", 8), ("quantize-channel", 4), ("mlp-units", 0.25), ("mlp-units", 0.5),
                ("magnitude-global", 0.5), (None, None)]]
SAME = ("accuracy", "perplexity", "size_mb", "params", "setting", "error")


def test_ray_actors_load_once(ray_instance, tmp_path):
    ray_rows = sw.sweep(grid=CACHED_GRID, engine="ray", workers=2, repeat=REPEAT, progress=False)
    local_rows = sw.sweep(grid=CACHED_GRID, engine="local", workers=1, repeat=REPEAT, progress=False)
    for rows, workers in ((ray_rows, 2), (local_rows, 1)):
        assert len({r["worker"] for r in rows}) == workers  # every actor got settings; one local process ran all
        for worker in {r["worker"] for r in rows}:  # each worker loaded the MLP exactly once, and reused it after
            mine = [r for r in rows if r["worker"] == worker]
            assert sum(r["loaded"] for r in mine) == 1, mine
    assert [r["key"] for r in ray_rows] == [r["key"] for r in local_rows] == [s.key for s in CACHED_GRID]
    for ours, theirs in zip(ray_rows, local_rows):
        assert ours["error"] is None
        for name in SAME:
            assert ours[name] == theirs[name], (ours["key"], name)  # exact: the same arithmetic on the same weights
    fresh = sw.run_setting(CACHED_GRID[-1], repeat=REPEAT)  # loaded for itself, in this process
    assert fresh["loaded"] and not local_rows[-1]["loaded"]
    assert all(fresh[name] == local_rows[-1][name] for name in SAME)  # the methods left the kept model untouched


def test_a_free_worker_takes_a_model_it_has_loaded_first():
    x, y = sw.Setting("mlp-names"), sw.Setting("gpt-small")
    pending = [x, y, x]
    assert sw._pick(pending, mine={"gpt-small"}, anyones={"gpt-small"}) == 1  # its own model
    assert sw._pick(pending, mine=set(), anyones={"mlp-names"}) == 1  # a model nobody has loaded
    assert sw._pick(pending, mine=set(), anyones={"mlp-names", "gpt-small"}) == 0  # else the first: no waiting


def test_ray_starts_quietly_without_a_dashboard(ray_instance):
    ray, printed = ray_instance
    assert printed == ""  # no dashboard address, no warnings
    assert len(ray.nodes()) == 1 and ray.cluster_resources()["CPU"] == 2
    assert not ray._private.worker.get_dashboard_url()  # include_dashboard=False
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert not sw.start_ray()  # already connected: nothing new starts


def test_a_failing_setting_records_its_error_and_the_sweep_goes_on(local_run):
    rows, out, _ = local_run
    failed = [r for r in rows if r["error"] is not None]
    assert [r["key"] for r in failed] == [KEYS[2]]
    assert failed[0]["error"].startswith("ValueError: model has no attention heads")
    assert failed[0]["accuracy"] is None and failed[0]["setting"] == "fraction removed 0.5"
    results = sw.rows_to_results(rows)
    assert [r.technique for r in results] == ["uncompressed", "quantize-channel"]
    assert all(0 < r.accuracy < 1 and r.perplexity > 1 and r.threads == 1 for r in results)


def test_rows_file_keeps_other_rows_and_retries_errors(local_run):
    rows, out, executed = local_run
    on_file = {r["key"]: r for r in sw.load_rows(out)}
    assert set(on_file) == {FOREIGN, *KEYS} and on_file[FOREIGN]["accuracy"] == 0.5
    assert on_file[KEYS[0]]["error"] is None  # the earlier failed attempt was run again
    assert sorted(executed) == sorted(KEYS)
    assert [on_file[k] for k in KEYS] == rows


def test_finished_rows_are_not_run_again(local_run, tmp_path, monkeypatch):
    rows, out, _ = local_run
    log = tmp_path / "tasks.log"
    monkeypatch.setenv(sw.LOG_ENV, str(log))
    again = sw.sweep(models=["mlp-names"], methods=["quantize-channel"], values=[4], out=out, progress=False)
    assert again == rows[:2] and not log.exists()


def _rows_or_none(path):
    """The rows on file (asserting that the file is a whole sweep rows file), or None before it exists."""
    try:
        return sw.load_rows(path)
    except FileNotFoundError:
        return None


def test_a_killed_sweep_resumes_without_redoing_rows(tmp_path):
    out, log = tmp_path / "rows.json", tmp_path / "tasks.log"
    command = [sys.executable, "-m", "lmlab", "sweep", "--models", "mlp-names", "--methods", "quantize-channel",
               "--values", "8,6,4,3,2", "--out", str(out), "--repeat", str(REPEAT), "--no-progress"]
    env = {**os.environ, sw.LOG_ENV: str(log)}
    first = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (_rows_or_none(out) or []):
            assert first.poll() is None, first.stderr.read().decode()
            time.sleep(0.02)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the CLI and its worker process, mid-sweep
        first.wait(timeout=30)
        first.stderr.close()
    done = {r["key"]: r for r in sw.load_rows(out)}
    assert 1 <= len(done) < 6, "the sweep was not caught halfway"
    assert all(r["error"] is None for r in done.values())
    log.rename(tmp_path / "first.log")
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    rows = {r["key"]: r for r in sw.load_rows(out)}
    assert len(rows) == 6 and all(r["error"] is None for r in rows.values())
    assert all(rows[key] == row for key, row in done.items())  # finished rows kept as they were
    assert sorted(log.read_text().split()) == sorted(set(rows) - set(done))  # only the missing ones ran
    assert "6 of 6 settings measured" in second.stdout


@pytest.mark.parametrize("arguments, message", [
    (dict(models=["gpt-huge"]), "model='gpt-huge' is not a shipped model"),
    (dict(models=["mlp-names"], methods=["prune-everything"]), "method='prune-everything' is unknown"),
    (dict(models=["mlp-names"], methods=["quantize-channel"], values=[4, 9]), "value=9 is out of range for bits"),
    (dict(models=["mlp-names"], methods=["mlp-units"], values={"heads": [0.5]}), "values names method='heads'"),
    (dict(models=["mlp-names"], batch_sizes=[0]), "batch_size=0 is out of range"),
    (dict(models=["mlp-names"], baseline=False), "the grid is empty"),
    (dict(models=["mlp-names"], engine="spark"), "engine='spark' is unknown"),
    (dict(models=["mlp-names"], workers=0), "workers=0 is out of range"),
    (dict(models=["mlp-names"], address="auto"), "address='auto' needs engine='ray'"),
    (dict(grid=[sw.Setting("mlp-names", "low-rank", 0)]), "value=0 is out of range for rank"),
])
def test_bad_grids_are_refused_before_any_work(arguments, message, tmp_path, monkeypatch):
    monkeypatch.setenv(sw.LOG_ENV, str(tmp_path / "tasks.log"))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        sw.sweep(**arguments, out=tmp_path / "rows.json", progress=False)
    assert time.perf_counter() - start < 1.0  # nothing was loaded
    assert not (tmp_path / "tasks.log").exists() and not (tmp_path / "rows.json").exists()


def test_another_kind_of_file_is_refused_not_overwritten(tmp_path):
    results = tmp_path / "results.json"
    save_results([Result("m", "t", "", 0.5, 1.0, 2.0)], results)
    notes = tmp_path / "notes.json"
    notes.write_text("my notes, not JSON")
    for path in (results, notes):
        before = path.read_bytes()
        with pytest.raises(ValueError, match="is not a sweep rows file"):
            sw.sweep(models=["mlp-names"], out=path, progress=False)
        assert path.read_bytes() == before


def test_cli_refuses_a_bad_grid_naming_it(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["sweep", "--models", "mlp-names", "--methods", "mlp-units", "--values", "8", "--out", str(out)]) == 2
    assert "value=8.0 is out of range for fraction removed; use 0 to 0.95" in capsys.readouterr().err
    assert main(["sweep", "--models", "mlp-names", "--values", "x=1,two", "--out", str(out)]) == 2
    assert "--values 'x=1,two' is not a comma-separated list of numbers" in capsys.readouterr().err
    assert main(["sweep", "--models", "gpt-small,gpt-xl", "--out", str(out)]) == 2
    assert "model='gpt-xl'" in capsys.readouterr().err
    assert not out.exists()


def test_default_values_lie_in_each_methods_range():
    for name, method in sw.METHODS.items():
        assert [method.check(v) for v in sw.default_values(name)]
    grid = sw.make_grid(["gpt-small"], ["quantize-channel", "int8"], batch_sizes=[1, 8])
    assert len(grid) == (1 + 4 + 2) * 2 and grid[0].key == "gpt-small/uncompressed/batch=1"
    assert sw.parse_values(["quantize-channel=8,4", "heads=0.5"], []) == {"quantize-channel": [8, 4], "heads": [0.5]}


def test_an_ngram_gets_its_baseline_only_and_a_slice_is_part_of_the_key():
    grid = sw.make_grid(["ngram-5", "gpt-small"], ["quantize-channel"], [4], documents=30)
    assert [s.key for s in grid] == ["ngram-5/uncompressed/batch=1/test[:30]",
                                     "gpt-small/uncompressed/batch=1/test[:30]",
                                     "gpt-small/quantize-channel=4/batch=1/test[:30]"]
    with pytest.raises(ValueError, match="model='ngram-5' is an n-gram and takes none"):
        sw.check_setting(sw.Setting("ngram-5", "heads", 0.5))
    grid = sw.make_grid(["lstm-kjv"], ["quantize-channel"], [4])  # a recurrent model: its baseline only, too
    assert [s.key for s in grid] == ["lstm-kjv/uncompressed/batch=1"]
    with pytest.raises(ValueError, match="model='lstm-kjv' is recurrent and takes none"):
        sw.check_setting(sw.Setting("lstm-kjv", "quantize-channel", 4))
    with pytest.raises(ValueError, match="documents=0"):
        sw.make_grid(["gpt-small"], documents=0)
