"""Hard gates on speed-ups measured in the same run: int8 against fp32, pruned against its parent.

The two calls are timed in alternated blocks (`paired_speedup`: wait 50 ms, 5 slow calls, wait, 5 fast calls,
... the first call of each block dropped) and the gate is on the median of the per-pair ratios: a load spike
on a shared machine slows both blocks of a pair alike, so the ratio holds still where absolute times jump,
and the wait keeps one runtime's still-spinning threads out of the other's timing (with single alternated
calls, ONNX Runtime's spinning workers slow the call after theirs and shrink the speed-up it shows). The
thresholds sit below the speed-ups these pairs reach (see GATES), so they fail on a real regression (an
int8 graph falling back to fp32 kernels, inductor freezing lost, pruning that no longer removes channels),
not on noise. pytest-benchmark also times the fast call, for the comparison with this machine's baseline.
"""

import pytest

from benchzoo import GATES
from deploybench.platform.env import cpu_flags
from deploybench.profile.latency import finished_call, paired_speedup


@pytest.mark.parametrize("gate", GATES, ids=lambda g: g.id)
def test_speedup(benchmark, zoo, loaded, gate):
    slow, slow_in = loaded(zoo.for_backend(gate.model, gate.slow[0], gate.slow[1]), gate.slow[1], gate.batch_size)
    fast, fast_in = loaded(zoo.for_backend(gate.model, gate.fast[0], gate.fast[1]), gate.fast[1], gate.batch_size)
    speedup = paired_speedup(finished_call(slow, slow_in), finished_call(fast, fast_in))
    benchmark(fast.run, fast_in)
    benchmark.extra_info.update(speedup=speedup, gate=gate.min_speedup)
    unstable = sorted(set(gate.unstable_on) & cpu_flags())
    if unstable:
        pytest.skip(f"{gate.id}: {speedup:.2f}x, not gated on CPUs with {', '.join(unstable)} (unstable there)")
    assert speedup >= gate.min_speedup, (
        f"{gate.id}: {gate.fast} is {speedup:.2f}x faster than {gate.slow}, below the gate {gate.min_speedup}x"
    )
