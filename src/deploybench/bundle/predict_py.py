"""The text of a bundle's predict.py: a common part (read images, normalize, softmax, print top-k) and one model
loader per runtime. It imports the runtime, numpy and Pillow only, never deploybench."""

from __future__ import annotations

_HEAD = '''"""Classify image files with this bundle's model: python predict.py IMAGE [IMAGE ...] [--top-k K] [--json].

Needs only the packages in requirements.txt. Each image is converted to the model's channels, resized to its input
size, scaled to [0, 1] and normalized with the mean and std in config.json (NCHW float32)."""
import argparse
import json
import pathlib

import numpy as np
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
CONFIG = json.loads((HERE / "config.json").read_text())


def preprocess(path):
    """One image as a (C, H, W) float32 array, normalized as in training."""
    _, channels, height, width = CONFIG["input"]["shape"]
    image = Image.open(path).convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32).reshape(height, width, channels).transpose(2, 0, 1) / 255.0
    mean = np.asarray(CONFIG["mean"], dtype=np.float32).reshape(channels, 1, 1)
    std = np.asarray(CONFIG["std"], dtype=np.float32).reshape(channels, 1, 1)
    return (x - mean) / std

'''

_ONNX = '''
def load():
    """A function from an NCHW float32 batch to logits (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(HERE / CONFIG["model_file"]), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]

'''

_TORCH_EXPORT = '''
def load():
    """A function from an NCHW float32 batch to logits (a torch.export program, CPU)."""
    import torch

    try:  # int8 programs call torchao's quantize ops, which importing it registers
        import torchao.quantization.pt2e  # noqa: F401
    except ImportError:
        pass
    module = torch.export.load(str(HERE / CONFIG["model_file"])).module()

    def run(batch):
        with torch.no_grad():
            return module(torch.from_numpy(batch)).float().numpy()

    return run

'''

_OPENVINO = '''
def load():
    """A function from an NCHW float32 batch to logits (OpenVINO, CPU)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(HERE / CONFIG["model_file"]), "CPU")
    return lambda batch: compiled(batch)[compiled.output(0)]

'''

_TAIL = """
def softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def main():
    parser = argparse.ArgumentParser(description="Classify images with this bundle's model.")
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--top-k", type=int, default=min(5, len(CONFIG["classes"])))
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of text lines")
    args = parser.parse_args()
    run = load()
    results = []
    for path in args.images:  # one image per call: every runtime takes batch 1
        probs = softmax(np.asarray(run(preprocess(path)[None]), dtype=np.float32))[0]
        top = np.argsort(-probs, kind="stable")[:args.top_k]
        results.append(dict(file=path, top=[dict(index=int(i), label=CONFIG["classes"][i],
                                                 probability=float(probs[i])) for i in top]))
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(r["file"] + "\\t" + "  ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"]))


if __name__ == "__main__":
    main()
"""

LOADERS = {"onnxruntime": _ONNX, "torch": _TORCH_EXPORT, "openvino": _OPENVINO}


def predict_script(runtime: str) -> str:
    """predict.py for a bundle whose model runs on `runtime` (a key of `LOADERS`)."""
    return _HEAD + LOADERS[runtime] + _TAIL
