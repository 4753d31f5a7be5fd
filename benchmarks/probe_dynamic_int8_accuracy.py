"""Whole-model accuracy of the CPU form of dynamic int8 (`dynamic-pt2e`: PT2E, X86InductorQuantizer with
`is_dynamic=True` on nn.Linear) against fp32, both run eagerly over the full test split, for trained variants
already in a workspace (read only: nothing is written to it). Not part of the suite (vit-small takes minutes):

    .venv/bin/python benchmarks/probe_dynamic_int8_accuracy.py --workspace WS --data-dir DATA VARIANT [VARIANT ...]
"""

import argparse
import time

import torch


def main() -> None:
    from deploybench.artifacts.formats import ExportedModule
    from deploybench.artifacts.runnable import runnable
    from deploybench.optimize.base import predict, stage_data
    from deploybench.optimize.quantize import _dynamic_pt2e_program
    from deploybench.store import Workspace

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("variants", nargs="+", help="trained (fp32 PyTorch) variant ids")
    args = p.parse_args()
    ws = Workspace(args.workspace, create=False)
    for vid in args.variants:
        variant = ws.get_variant(vid)
        data = stage_data(ws, variant, args.data_dir)
        start = time.perf_counter()
        fp32, fp32_logits = predict(runnable(variant), data)
        fp32_s, start = time.perf_counter() - start, time.perf_counter()
        int8, int8_logits = predict(ExportedModule(_dynamic_pt2e_program(runnable(variant), data.example(2))), data)
        int8_s = time.perf_counter() - start
        agree = float((int8_logits.argmax(1) == fp32_logits.argmax(1)).float().mean())
        print(
            f"{variant.model} [{vid[:8]}], {len(fp32_logits)} test images, {torch.get_num_threads()} threads: "
            f"fp32 {100 * fp32.top1:.2f}% ({fp32_s:.0f} s), dynamic-pt2e {100 * int8.top1:.2f}% ({int8_s:.0f} s), "
            f"top-1 agreement {100 * agree:.2f}%, largest logit difference "
            f"{float((int8_logits - fp32_logits).abs().max()):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
