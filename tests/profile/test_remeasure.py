"""An unstable timing is measured again before it is stored: bounded attempts, a pause before each, the most
stable kept, the number of attempts recorded; what stays unstable is stored as such and wins no front.
Timings are injected (`latency_stats` of synthetic times), so every outcome is fixed."""

import pytest

from deploybench.profile.latency import Protocol, latency_stats, measure_until_stable


def _stats(spread: float, base_s: float = 0.010) -> dict:
    """`latency_stats` of 60 runs alternating between `base_s` and `base_s * (1 + spread)`, plus a little
    jitter: its 95% interval spans about `spread` of the median (unstable above 5%)."""
    times = [base_s * (1 + spread * (i % 2)) + 1e-7 * (i % 5) for i in range(60)]
    return latency_stats(times, 1)


STABLE, WIDE, WIDER = _stats(0.0), _stats(0.5), _stats(1.0)


def _sequence(*results):
    calls = []

    def measure():
        calls.append(1)
        return results[len(calls) - 1]

    return measure, calls


def test_injected_timings_are_what_they_claim():
    assert STABLE["stable"] and not WIDE["stable"] and not WIDER["stable"]
    assert STABLE["ci95_rel_width"] < WIDE["ci95_rel_width"] < WIDER["ci95_rel_width"]


def test_a_stable_first_timing_is_not_measured_again():
    measure, calls = _sequence(STABLE)
    pauses = []
    got = measure_until_stable(measure, Protocol(), sleep=pauses.append)
    assert got == dict(STABLE, attempts=1) and len(calls) == 1 and pauses == []


def test_an_unstable_timing_is_measured_again_after_a_pause_and_the_stable_one_kept():
    measure, calls = _sequence(WIDE, STABLE, WIDER)
    pauses = []
    got = measure_until_stable(measure, Protocol(retry_pause_s=3.0), sleep=pauses.append)
    assert got == dict(STABLE, attempts=2) and len(calls) == 2 and pauses == [3.0]


def test_a_timing_unstable_at_every_attempt_keeps_the_narrowest_and_says_so():
    measure, calls = _sequence(WIDER, WIDE, WIDER, STABLE)
    pauses = []
    got = measure_until_stable(measure, Protocol(max_attempts=3, retry_pause_s=2.0), sleep=pauses.append)
    assert got == dict(WIDE, attempts=3) and got["stable"] is False
    assert len(calls) == 3 and pauses == [2.0, 2.0]  # bounded: the stable fourth is never asked for
    assert Protocol.quick().retry_pause_s == 0 < Protocol().retry_pause_s and Protocol().max_attempts == 3


@pytest.fixture
def injected(monkeypatch):
    """`runner.measure_latency` returning the given timings in turn (the model is loaded and run for real)."""
    from deploybench.profile import runner

    queue = []

    def fake(impl, batch, batch_size, protocol):
        return queue.pop(0)

    monkeypatch.setattr(runner, "measure_latency", fake)
    return queue


def _profile(ws, trained, data_dir, lines):
    from deploybench.profile.runner import profile_variants

    (row,) = profile_variants(
        ws,
        [trained],
        ["torch-cpu"],
        batch_sizes=(2,),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=False,
        log=lines.append,
    )
    return row


def test_profile_run_stores_the_remeasured_timing_not_the_unstable_one(trained_workspace, injected):
    ws, trained, data_dir = trained_workspace
    injected += [WIDE, STABLE]
    lines = []
    row = _profile(ws, trained, data_dir, lines)
    m = row["metrics"]
    assert injected == [] and m["attempts"] == 2 and m["stable"] is True
    assert m["latency_ms_p50"] == STABLE["latency_ms_p50"] and m["latency_ms_ci95"] == STABLE["latency_ms_ci95"]
    assert ws.measurements(trained.id)[-1]["metrics"]["latency_ms_p50"] == STABLE["latency_ms_p50"]
    assert m["accuracy_top1"] == pytest.approx(trained.metrics["accuracy_top1"])  # accuracy still measured
    assert not any("unstable" in line for line in lines)


def test_a_row_unstable_after_every_attempt_is_stored_flagged_and_off_the_front(trained_workspace, injected):
    from deploybench.profile.compare import compare_rows

    ws, trained, data_dir = trained_workspace
    injected += [WIDER, WIDE, WIDER]
    lines = []
    m = _profile(ws, trained, data_dir, lines)["metrics"]
    assert injected == [] and m["attempts"] == 3 and m["stable"] is False
    assert m["latency_ms_p50"] == WIDE["latency_ms_p50"]  # the narrowest of the three
    assert any("(unstable after 3 attempt(s))" in line for line in lines)
    (row,) = compare_rows(ws)
    assert row["stable"] is False and row["pareto"] is False  # alone in its group, and still not on the front
