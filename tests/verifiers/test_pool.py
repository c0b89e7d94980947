"""ScoringPool: worker processes, hard per-item timeouts, error counting, reuse and clean-up."""
import importlib
import logging
import pickle
from functools import partial
from pathlib import Path

import pytest

import verifiers
from verifiers import PoolStartError, Score, ScoringPool, registry
from verifiers.pool import identity_recipe

HERE = str(Path(__file__).parent)


@pytest.fixture(autouse=True)
def plugins(monkeypatch):
    # Spawned workers inherit sys.path, so they can import the plug-in module by name too.
    monkeypatch.syspath_prepend(HERE)
    return importlib.import_module("plugin_examples")


@pytest.fixture
def moody_pool(plugins):
    pool = ScoringPool(identity_recipe(verifiers.get("plugin_examples:moody")), workers=2, timeout_s=1.0)
    yield pool
    pool.close()


def _alive(pool):
    return [w.process for w in pool._pool if w.process.is_alive()]


def test_stuck_item_times_out_and_pool_recovers(moody_pool, caplog):
    with caplog.at_level(logging.WARNING, logger="verifiers"):
        scores = moody_pool.score_batch(["a", "hang", "b", "c"], [{}] * 4)
    assert [s.reward for s in scores] == [1.0, 0.0, 1.0, 1.0]
    assert scores[1].info == {"error": "timeout", "timeout_s": 1.0}
    assert moody_pool.stats.timeouts == 1
    assert moody_pool.stats.worker_starts == 3  # two, plus the replacement of the killed one
    assert any("timeout" in r.getMessage() for r in caplog.records)
    # Still works afterwards, with the same (reused) worker processes.
    pids_before = {w.process.pid for w in moody_pool._pool}
    again = moody_pool.score_batch(["pid", "pid", "pid"], [{}] * 3)
    assert all(s.reward == 1.0 for s in again)
    assert {s.info["pid"] for s in again} <= pids_before
    assert moody_pool.stats.worker_starts == 3 and moody_pool.stats.items == 7


def test_exceptions_and_crashes_score_zero_and_are_counted(moody_pool, caplog):
    with caplog.at_level(logging.WARNING, logger="verifiers"):
        scores = moody_pool.score_batch(["raise", "ok", "die", "raise", "nan"], [{}] * 5)
    assert [s.reward for s in scores] == [0.0, 1.0, 0.0, 0.0, pytest.approx(float("nan"), nan_ok=True)]
    assert scores[0].info["error"] == "ValueError: moody verifier refuses"
    assert scores[2].info["error"] == "worker process died (exit code 3)"
    stats = moody_pool.stats
    assert (stats.errors, stats.crashes, stats.timeouts) == (2, 1, 0)
    assert stats.error_types["ValueError"] == 2
    assert moody_pool.metrics()["verifier/pool_errors"] == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("2/5 items scored 0: ValueError: moody verifier refuses" in m for m in messages)
    assert any("worker process died" in m for m in messages)


def test_composite_uses_pool_and_keeps_breakdown(plugins):
    specs = [{"name": "plugin_examples:moody", "weight": 2.0}, {"name": "plugin_examples:contains_answer"}]
    with verifiers.build(specs, workers=1, timeout_s=1.0) as composite:
        scores = composite.score_batch(["1", "hang", "raise"], [{"answer": 1}] * 3)
        assert scores[0].reward == 3.0 and scores[0].info["rewards"] == {"moody": 1.0, "contains_answer": 1.0}
        assert scores[1].reward == 0.0 and scores[1].info["error"] == "timeout"
        assert scores[1].info["rewards"] == {"moody": 0.0, "contains_answer": 0.0}
        assert scores[2].info["errors"] == {"moody": "ValueError: moody verifier refuses"}
        metrics = composite.metrics()
        assert metrics["verifier/timeouts"] == 1 and metrics["verifier/errors/moody"] == 1
        pool = composite._pool
        assert len(_alive(pool)) == 1
    assert composite._pool is None and not _alive(pool)


def test_inline_when_workers_is_zero(plugins):
    composite = verifiers.build([{"name": "plugin_examples:moody"}], workers=0)
    assert composite.score_batch(["pid"], [{}])[0].info["details"]["moody"]["pid"] == __import__("os").getpid()
    assert composite._pool is None


def test_workers_start_lazily_and_close_cleanly(plugins):
    pool = ScoringPool(identity_recipe(verifiers.get("plugin_examples:moody")), workers=2, timeout_s=5)
    assert pool._pool == []  # nothing started yet
    assert pool.score_batch([], []) == []
    assert pool.score("x", {}) == Score(1.0, {})
    assert len(pool._pool) == 1  # never more workers than items
    processes = [w.process for w in pool._pool]
    pool.close()
    assert not any(p.is_alive() for p in processes)
    with pytest.raises(RuntimeError, match="closed"):
        pool.score("x", {})


def test_in_process_registration_travels_to_workers(plugins):
    registry.register("pool_moody", plugins.moody, overwrite=True)
    try:
        with verifiers.build([{"name": "pool_moody"}], workers=1, timeout_s=5) as composite:
            assert composite.score_batch(["ok"], [{}])[0].info["rewards"] == {"pool_moody": 1.0}
    finally:
        registry.unregister("pool_moody")


def test_unpicklable_verifier_is_refused_up_front():
    verifier = verifiers.FunctionVerifier(lambda c, e: 1.0, name="lam")
    with pytest.raises(TypeError, match="module level"):
        ScoringPool(identity_recipe(verifier), workers=1)
    registry.register("lam", lambda c, e: 1.0, overwrite=True)
    try:
        with pytest.raises(TypeError, match="workers=0"):
            verifiers.build([{"name": "lam"}], workers=1)
        assert verifiers.build([{"name": "lam"}], workers=0).score("x", {}).reward == 1.0
    finally:
        registry.unregister("lam")


def test_worker_start_failure_is_an_error_not_a_zero(plugins):
    with ScoringPool(partial(plugins.broken_factory), workers=1, timeout_s=5) as pool:
        with pytest.raises(PoolStartError, match="cannot be built"):
            pool.score("x", {})


@pytest.mark.parametrize("kwargs, message", [
    ({"workers": 0}, "workers"),
    ({"workers": 1, "timeout_s": 0}, "timeout_s"),
    ({"workers": 1, "start_method": "fork"}, "start_method"),
])
def test_pool_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScoringPool(identity_recipe(Score), **kwargs)


def test_composite_pickles_without_its_pool(plugins):
    composite = verifiers.build([{"name": "plugin_examples:contains_answer"}], workers=1)
    composite._get_pool()
    copy = pickle.loads(pickle.dumps(composite))
    assert copy._pool is None and copy.score("1", {"answer": 1}).reward == 1.0
    composite.close()


def test_interrupted_batch_leaves_no_stale_workers(moody_pool, monkeypatch):
    moody_pool.score_batch(["warm", "up"], [{}] * 2)
    real_wait = moody_pool._wait_and_collect

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(moody_pool, "_wait_and_collect", interrupt)
    with pytest.raises(KeyboardInterrupt):
        moody_pool.score_batch(["hang", "pid"], [{}] * 2)
    assert all(w.item is None for w in moody_pool._pool)
    monkeypatch.setattr(moody_pool, "_wait_and_collect", real_wait)
    assert [s.reward for s in moody_pool.score_batch(["a", "b", "c"], [{}] * 3)] == [1.0, 1.0, 1.0]


def test_warns_when_pool_timeout_is_below_a_verifiers_own_limit(plugins, caplog, monkeypatch):
    monkeypatch.setattr(plugins.ExactMatch, "max_seconds", 60.0, raising=False)
    with caplog.at_level(logging.WARNING, logger="verifiers"):
        composite = verifiers.build([{"name": "plugin_examples:ExactMatch"}], workers=1, timeout_s=10)
    composite.close()
    assert any("up to 60 s per item" in r.getMessage() for r in caplog.records)


def test_items_travel_in_chunks(plugins):
    with ScoringPool(identity_recipe(verifiers.get("plugin_examples:moody")), workers=2, timeout_s=5) as pool:
        scores = pool.score_batch([f"item {i}" for i in range(200)], [{}] * 200)
        assert [s.reward for s in scores] == [1.0] * 200
        # 200 items, 2 workers: chunks of 50 then smaller ones, never one round trip per item.
        assert pool.stats.chunks <= 20, pool.stats.chunks
        assert pool.metrics()["verifier/chunks"] == pool.stats.chunks


def test_a_stuck_item_in_a_chunk_only_costs_itself(plugins):
    with ScoringPool(identity_recipe(verifiers.get("plugin_examples:moody")), workers=1, timeout_s=1.0) as pool:
        completions = ["a", "b", "hang", "c", "raise", "d", "e", "f"]
        scores = pool.score_batch(completions, [{}] * len(completions))
    assert [s.reward for s in scores] == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert scores[2].info["error"] == "timeout" and scores[4].info["error"].startswith("ValueError")
    assert pool.stats.timeouts == 1 and pool.stats.chunks < len(completions)


def test_unpicklable_example_in_a_chunk_fails_alone(plugins):
    with ScoringPool(identity_recipe(verifiers.get("plugin_examples:moody")), workers=1, timeout_s=5) as pool:
        examples = [{}] * 10
        examples[4] = {"answer": lambda: 1}
        scores = pool.score_batch([f"x{i}" for i in range(10)], examples)
    assert [s.reward for s in scores] == [1.0] * 4 + [0.0] + [1.0] * 5
    assert scores[4].info["error"].startswith("cannot send item")
