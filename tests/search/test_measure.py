"""PairedTimer: what it loads and when it closes it."""

import pytest

from deploybench.profile import crosscheck
from deploybench.search import measure
from deploybench.search.measure import LatencyProtocol, PairedTimer


def test_every_runtime_is_closed_once_even_when_a_close_fails(trained_workspace, monkeypatch):
    # The base stays loaded for the whole search; each trial's runtime goes after its trial (a search holds one
    # variant's session or compiled module at a time), and a failing close does not leave the others open.
    ws, root, _ = trained_workspace
    loads, closed = [], []

    class Runtime:
        def __init__(self, key):
            self.key = key

        def prepare(self, x):
            return x

        def run(self, x):
            return x

        def synchronize(self):
            pass

        def close(self):
            closed.append(self.key)
            if self.key[1] == 2:
                raise RuntimeError("close failed")

    def load(backend, variant, batch_size, threads):
        loads.append((variant.id, threads))
        return Runtime((variant.id, threads))

    monkeypatch.setattr(crosscheck, "loaded_backend", load)
    monkeypatch.setattr(measure, "paired_speedup", lambda slow, fast, **protocol: 2.0)
    timer = PairedTimer(ws, root, "torch-cpu", 2, 1, LatencyProtocol.quick())
    assert timer.measure(root, 3)["speedup"] == 2.0
    assert closed == [(root.id, 3)]
    with pytest.raises(RuntimeError, match="close failed"):
        timer.versus(root, 2, root, 4)  # the first close fails: the second is closed all the same
    assert sorted(closed[1:]) == [(root.id, 2), (root.id, 4)]
    timer.close()
    assert sorted(closed) == sorted(loads)  # the base last, at the search's end
    assert len(loads) == 4
