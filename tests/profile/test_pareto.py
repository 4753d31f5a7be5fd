"""The noise-aware Pareto front: a point wins or loses only beyond measurement noise, and a timing that is not
stable takes no part in a front with latency."""

from deploybench.profile.pareto import ACCURACY, LATENCY, SIZE, dominates, mark_pareto, pareto_front


def _row(acc, ci, stable=True, size=100, n=10_000):
    return dict(
        accuracy_top1=acc,
        latency_ms_p50=sum(ci) / 2,
        latency_ms_ci95=list(ci),
        stable=stable,
        size_bytes=size,
        test_images=n,
    )


def test_an_unstable_row_is_never_on_the_front_and_dominates_nothing():
    slow = _row(0.90, (1.0, 1.1))
    fast_unstable = _row(0.95, (0.1, 0.5), stable=False)  # would dominate `slow` if its timing held
    assert not dominates(fast_unstable, slow)
    assert pareto_front([slow, fast_unstable]) == [True, False]
    assert pareto_front([fast_unstable]) == [False]  # not even alone
    assert dominates(_row(0.95, (0.1, 0.5)), slow)  # the same numbers, stable, do


def test_a_difference_inside_the_noise_decides_nothing():
    a, b = _row(0.900, (1.00, 1.20)), _row(0.902, (1.10, 1.30))  # intervals overlap, accuracy within one s.e.
    assert not dominates(a, b) and not dominates(b, a)
    assert pareto_front([a, b]) == [True, True]
    c = _row(0.900, (1.21, 1.30))  # slower beyond noise, accuracy the same
    assert dominates(a, c) and pareto_front([a, c]) == [True, False]


def test_stability_only_matters_where_a_timing_is_an_objective():
    small_unstable, big = _row(0.90, (0.1, 0.5), stable=False, size=1), _row(0.90, (1.0, 1.1), size=9)
    assert pareto_front([small_unstable, big], [ACCURACY, SIZE]) == [True, False]
    assert pareto_front([small_unstable, big], [ACCURACY, LATENCY, SIZE]) == [False, True]


def test_rows_without_a_stability_record_are_compared_on_their_intervals():
    rows = [_row(0.90, (1.0, 1.1)), _row(0.90, (0.5, 0.6))]
    for r in rows:
        del r["stable"]
    assert pareto_front(rows) == [False, True]
    marked = mark_pareto([dict(r, backend="b", dataset="d", batch_size=1) for r in rows])
    assert [r["pareto"] for r in marked] == [False, True]
