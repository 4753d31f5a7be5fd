"""Latency statistics on synthetic timings (exact), and the timing loop's stopping rule."""

import pytest

from deploybench.profile.latency import Protocol, latency_stats, median_ci_ranks, time_runs


@pytest.mark.parametrize("n,ranks", [(6, (1, 6)), (10, (2, 9)), (20, (6, 15)), (50, (18, 33)), (100, (40, 61))])
def test_median_interval_ranks_match_the_binomial_tables(n, ranks):
    assert median_ci_ranks(n) == ranks


def test_stats_of_a_known_timing_list():
    times_s = [i / 1000 for i in range(1, 101)]  # 1..100 ms, shuffled order must not matter
    s = latency_stats(times_s[::-1], batch_size=4)
    assert s["latency_ms_p50"] == pytest.approx(50.5)
    assert s["latency_ms_p90"] == pytest.approx(90.1)
    assert s["latency_ms_p99"] == pytest.approx(99.01)
    assert s["latency_ms_ci95"] == pytest.approx([40.0, 61.0])
    assert s["throughput_per_s"] == pytest.approx(4 / 0.0505)
    assert s["runs"] == 100 and s["stable"] is False  # interval is 42% of the median


def test_stable_means_the_interval_is_within_five_percent_of_the_median():
    tight = [0.010 + 0.0001 * (i % 5) for i in range(60)]  # 10.0..10.4 ms
    assert latency_stats(tight, 1)["stable"] is True
    wide = [0.010 * (1 + (i % 2)) for i in range(60)]  # half 10 ms, half 20 ms
    assert latency_stats(wide, 1)["stable"] is False


def test_too_few_runs_are_never_stable():
    s = latency_stats([0.01] * 5, 1)
    assert s["latency_ms_ci95"] == [10.0, 10.0] and s["stable"] is False


def test_timing_loop_reaches_both_the_count_and_the_duration():
    calls = []
    times = time_runs(lambda: calls.append(1), Protocol(warmup=3, min_runs=7, min_seconds=0.02))
    assert len(times) >= 7 and sum(times) <= 0.02 + 1  # count reached...
    assert len(calls) == 3 + len(times)  # ...after the warm-up calls
    slow = time_runs(lambda: None, Protocol(warmup=0, min_runs=1, min_seconds=0.03))
    assert len(slow) > 1  # the duration keeps it going past the minimum count


def test_cross_check_runs_both_timers(trained_workspace):
    from deploybench.profile.crosscheck import cross_check

    ws, trained, _ = trained_workspace
    r = cross_check(ws, trained, "torch-cpu", 2, 1, Protocol.quick(), rounds=2)
    assert r["ours_ms"] > 0 and r["reference_ms"] > 0 and r["reference"] == "torch.utils.benchmark.Timer"


def test_paired_speedup_sees_a_known_ratio():
    import time

    from deploybench.profile.latency import paired_speedup

    def sleeper(seconds):
        return lambda: time.sleep(seconds)

    assert paired_speedup(sleeper(0.004), sleeper(0.001), pairs=9) == pytest.approx(4.0, rel=0.35)


def test_paired_speedup_waits_out_the_other_runtimes_threads():
    """A runtime whose threads keep the cores busy for 20 ms after each call (ONNX Runtime's and OpenMP's
    spinning workers) slows the other runtime's next call; single calls in alternation would measure about
    1.1x in this simulation instead of 4x, the settled blocks measure the calls themselves."""
    import time

    from deploybench.profile.latency import paired_speedup

    cores = {"held_by": None, "until": 0.0}

    def runtime(name, seconds):
        def call():
            wait = cores["until"] - time.perf_counter()
            if cores["held_by"] != name and wait > 0:
                time.sleep(wait)  # the other runtime's threads still hold the cores
            time.sleep(seconds)
            cores["held_by"], cores["until"] = name, time.perf_counter() + 0.02

        return call

    assert paired_speedup(runtime("fp32", 0.004), runtime("int8", 0.001), pairs=9) == pytest.approx(4.0, rel=0.35)
    with pytest.raises(ValueError, match="at least 2 calls"):
        paired_speedup(runtime("fp32", 0.004), runtime("int8", 0.001), block=1)


def test_profile_check_against_prints_a_paired_speedup(onnx_workspace, capsys):
    from deploybench.cli import profile_cmd

    ws, trained, onnx_variant, _ = onnx_workspace
    assert (
        profile_cmd.main(
            [
                "check",
                "--variant",
                onnx_variant.id,
                "--backend",
                "ort-cpu",
                "--batch-size",
                "4",
                "--threads",
                "1",
                "--against",
                f"{trained.id}:torch-cpu",
                "--workspace",
                str(ws.root),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "ratio" in out and f"speed-up over {trained.id} on torch-cpu:" in out
    from deploybench.store.pairs import stored_pairs

    (pair,) = stored_pairs(ws)  # stored, for `profile results`, with what produced it
    assert (pair["variant"], pair["backend"], pair["against"], pair["against_backend"]) == (
        onnx_variant.id,
        "ort-cpu",
        trained.id,
        "torch-cpu",
    )
    assert (pair["batch_size"], pair["threads"]) == (4, 1) and f"{pair['speedup']:.2f}x" in out
    assert pair["command"].startswith("deploybench profile check --variant") and pair["environment"]["threads"] == 1


class _QueuedDevice:
    """A backend whose `run` only queues the work, like a GPU's, and whose `synchronize` waits for it."""

    def __init__(self, seconds):
        self.seconds, self.queued = seconds, 0

    def run(self, inputs):
        self.queued += 1

    def synchronize(self):
        import time

        time.sleep(self.seconds * self.queued)
        self.queued = 0


def test_every_timer_waits_for_queued_work():
    """`time_runs` (what `profile run` times) and `paired_speedup` (`profile check --against`, the gates) time
    `finished_call`s: the queued work, not just the launch, which would measure a 4 ms and a 1 ms model alike."""
    from deploybench.profile.latency import finished_call, paired_speedup

    slow, fast = _QueuedDevice(0.004), _QueuedDevice(0.001)
    assert min(time_runs(finished_call(slow, None), Protocol(warmup=1, min_runs=5, min_seconds=0))) >= 0.004
    assert paired_speedup(finished_call(slow, None), finished_call(fast, None), pairs=9) == pytest.approx(4.0, rel=0.35)
