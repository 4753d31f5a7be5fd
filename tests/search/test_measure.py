"""PairedTimer: what it loads and when it closes it."""

import pytest

from deploybench.search import measure
from deploybench.search.measure import LatencyProtocol, PairedTimer


def test_every_runtime_is_closed_once_even_when_a_close_fails(trained_workspace, stand_in_runtimes, monkeypatch):
    # The base stays loaded for the whole search; each trial's runtime goes after its trial (a search holds one
    # variant's session or compiled module at a time), and a failing close does not leave the others open.
    ws, root, _ = trained_workspace
    loads, closed, failing = stand_in_runtimes
    monkeypatch.setattr(measure, "paired_speedup", lambda slow, fast, **protocol: 2.0)

    def key(threads):
        return (root.id, "torch-cpu", 2, threads)

    failing.add(key(2))
    timer = PairedTimer(ws, root, "torch-cpu", 2, 1, LatencyProtocol.quick())
    assert timer.measure(root, 3)["speedup"] == 2.0
    assert closed == [key(3)]
    with pytest.raises(RuntimeError, match="close failed"):
        timer.versus(root, 2, root, 4)  # the first close fails: the second is closed all the same
    assert sorted(closed[1:]) == [key(2), key(4)]
    timer.close()
    assert sorted(closed) == sorted(loads) and len(loads) == 4  # the base last, at the search's end
