"""Why `quantize --method dynamic` is slow on a CPU: one `vit-small` MLP block (384 -> 1536 -> GELU -> 384, a batch
of 8 x 197 tokens, 1 thread) in fp32, as torchao's dynamic int8 program (what the `dynamic` method saves) and as
PT2E dynamic int8 with X86InductorQuantizer, each eager and compiled (inductor freezing on), with the share of the
dynamic program's time spent in `aten::_int_mm`; first, the product `optimize all` times to decide whether to make
torchao's `dynamic` (`int_mm_times`, at torch's default threads). Not part of the suite (it compiles four programs):

    .venv/bin/python benchmarks/probe_dynamic_int8.py
"""

import time

import torch
import torch.nn as nn


def ms(call, n: int = 5) -> float:
    call()
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n * 1e3


def compiled(module):
    with torch._inductor.config.patch(freezing=True):
        program = torch.compile(module, dynamic=False)
        program(X)
    return program


def block() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(384, 1536), nn.GELU(), nn.Linear(1536, 384)).eval()


DEFAULT_THREADS = torch.get_num_threads()  # what `optimize all` runs with
torch.set_num_threads(1)
X = torch.randn(8, 197, 384)


def main() -> None:
    from deploybench.optimize.quantize import INT_MM_SHAPE, int_mm_times

    torch.set_num_threads(DEFAULT_THREADS)
    int8, fp32 = int_mm_times(runs=50)
    print(
        f"optimize all's check, {'x'.join(map(str, INT_MM_SHAPE))}, {DEFAULT_THREADS} threads, median of 50: "
        f"torch._int_mm {int8:.3f} ms, fp32 mm {fp32:.3f} ms ({fp32 / int8:.2f}x)"
    )
    torch.set_num_threads(1)
    from torch.profiler import profile
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    fp32 = block()
    torchao = block()
    quantize_(torchao, Int8DynamicActivationInt8WeightConfig())
    torchao = torch.export.export(torchao, (X,)).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_dynamic=True))
    pt2e = prepare_pt2e(torch.export.export(block(), (X,)).module(), quantizer)
    pt2e(X)
    pt2e = convert_pt2e(pt2e)
    with torch.no_grad():
        reference = fp32(X)
        for name, module in (("fp32", fp32), ("torchao dynamic int8", torchao), ("PT2E dynamic int8", pt2e)):
            eager = ms(lambda: module(X))  # noqa: B023 (called at once)
            program = compiled(module)
            diff = (program(X) - reference).abs().max().item()
            print(
                f"{name}: eager {eager:.1f} ms, compiled {ms(lambda: program(X)):.1f} ms, "  # noqa: B023
                f"largest difference from fp32 {diff:.4f} (outputs up to {reference.abs().max().item():.2f})"
            )
        with profile() as prof:
            torchao(X)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    int_mm = sum(e.self_cpu_time_total for e in events if e.key == "aten::_int_mm")
    print(f"torchao dynamic int8, eager: {100 * int_mm / total:.1f}% of the time in aten::_int_mm")


if __name__ == "__main__":
    main()
