"""`deploybench bundle`: the bundle's predict.py, run in an isolated interpreter that cannot import deploybench,
predicts what the suite's own runnable predicts on the same images."""

import json
import subprocess
import sys

import pytest
import torch
import torchvision.datasets as tvd
import yaml
from PIL import Image

from deploybench.artifacts.runnable import runnable
from deploybench.bundle import build_bundle
from deploybench.cli.bundle import main as bundle_main
from deploybench.data import dataset_info
from deploybench.data.presets import eval_transform

MAX_IMAGES = 100


@pytest.fixture
def test_pngs(tiny_fashion_mnist, tmp_path):
    """The fixture's test images (all, up to 100) saved as PNG files."""
    data = tvd.FashionMNIST(str(tiny_fashion_mnist), train=False, download=False).data[:MAX_IMAGES].numpy()
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i, pixels in enumerate(data):
        paths.append(folder / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def suite_predictions(variant, paths) -> list[int]:
    """Top-1 of the suite's own runnable on the PNGs, preprocessed by the suite's evaluation transform."""
    transform = eval_transform(dataset_info("fashion-mnist"))
    batch = torch.stack([transform(Image.open(p)) for p in paths])
    with torch.no_grad():
        return runnable(variant)(batch).argmax(1).tolist()


# `python -I` drops the working folder and user site from sys.path, but an editable install's .pth still puts
# deploybench on it: the runner blocks the package too, so an import of it in predict.py fails.
_BLOCKED = (
    "import runpy, sys; sys.modules['deploybench'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def isolated(*argv: str, cwd) -> subprocess.CompletedProcess:
    """Run a script in a fresh interpreter, `python -I`, where deploybench cannot be imported."""
    return subprocess.run(
        [sys.executable, "-I", "-c", _BLOCKED, *argv], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def bundle_predictions(bundle, paths) -> list[int]:
    """Top-1 of the bundle's predict.py run in an isolated interpreter without deploybench."""
    proc = isolated(str(bundle / "predict.py"), "--json", "--top-k", "3", *map(str, paths), cwd=bundle.parent)
    assert proc.returncode == 0, proc.stderr
    return [r["top"][0]["index"] for r in json.loads(proc.stdout)]


def test_isolated_interpreter_cannot_import_deploybench(tmp_path):
    (tmp_path / "probe.py").write_text("import deploybench\n")
    proc = isolated(str(tmp_path / "probe.py"), cwd=tmp_path)
    assert proc.returncode != 0 and "deploybench" in proc.stderr


def test_onnx_bundle_predicts_like_the_suite(onnx_workspace, test_pngs, tmp_path):
    ws, _, onnx_variant, data_dir = onnx_workspace
    out = build_bundle(ws, onnx_variant.id, tmp_path / "bundle", data_dir=data_dir)
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "config.json", "README.md", "predict.py", "requirements.txt"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["input"]["shape"] == [1, 1, 28, 28] and config["input"]["layout"] == "NCHW"
    assert config["classes"] == list(dataset_info("fashion-mnist").classes)
    assert config["runtime"]["name"] == "onnxruntime" and config["runtime"]["opset"] == 17
    assert "deploybench" not in (out / "predict.py").read_text().replace("this bundle", "")
    assert (out / "requirements.txt").read_text().split("\n")[0].startswith("onnxruntime")
    assert bundle_predictions(out, test_pngs) == suite_predictions(onnx_variant, test_pngs)


def test_torch_bundle_is_a_program_that_predicts_like_the_suite(trained_workspace, test_pngs, tmp_path):
    ws, trained, data_dir = trained_workspace
    out = build_bundle(ws, trained.id, tmp_path / "bundle", data_dir=data_dir)
    assert (out / "model.pt2").is_file() and (out / "weights.pt").is_file()
    assert "architecture" in (out / "README.md").read_text()
    assert bundle_predictions(out, test_pngs) == suite_predictions(trained, test_pngs)


def _openvino_ir_variant(ws, onnx_variant):
    """An `openvino-ir` child of the ONNX variant (fp32 model.xml + model.bin); skips where that format or
    OpenVINO is not there."""
    from deploybench.artifacts import formats

    if "openvino-ir" not in getattr(formats, "OPENVINO_FORMATS", ()):
        pytest.skip("the openvino-ir format has not landed")
    ov = pytest.importorskip("openvino")

    def write(d):
        ov.save_model(
            ov.convert_model(str(onnx_variant.path / "model.onnx")), str(d / "model.xml"), compress_to_fp16=False
        )

    variant, _ = ws.create_variant(
        model=onnx_variant.model,
        dataset=onnx_variant.dataset,
        stage="convert",
        config=dict(to="openvino-ir"),
        parent=onnx_variant,
        fmt="openvino-ir",
        write=write,
    )
    return variant


def test_openvino_bundle_predicts_like_the_suite(onnx_workspace, test_pngs, tmp_path):
    ws, _, onnx_variant, data_dir = onnx_workspace
    ir = _openvino_ir_variant(ws, onnx_variant)
    out = build_bundle(ws, ir.id, tmp_path / "bundle", data_dir=data_dir)
    assert (out / "model.xml").is_file() and (out / "model.bin").is_file()
    assert bundle_predictions(out, test_pngs) == suite_predictions(ir, test_pngs)


def test_model_card_front_matter_follows_the_hub_layout(onnx_workspace, tmp_path):
    ws, _, onnx_variant, data_dir = onnx_workspace
    ws.add_measurements(
        [
            dict(
                variant_id=onnx_variant.id,
                backend="ort-cpu",
                device="cpu",
                batch_size=1,
                threads=1,
                metrics=dict(
                    accuracy_top1=0.25,
                    accuracy_top5=0.75,
                    latency_ms_p50=0.5,
                    latency_ms_p90=0.6,
                    throughput_per_s=2000.0,
                    stable=True,
                ),
                environment=dict(cpu_model="Test CPU", cpu_flags=["avx2"], gpu=None),
            )
        ]
    )
    out = build_bundle(ws, onnx_variant.id, tmp_path / "bundle", data_dir=data_dir)
    text = (out / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "onnx" and meta["pipeline_tag"] == "image-classification"
    assert meta["datasets"] == ["zalando-datasets/fashion_mnist"] and "image-classification" in meta["tags"]
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert metrics[0] == dict(type="accuracy", name="top-1 accuracy", value=0.25)
    config = json.loads((out / "config.json").read_text())
    assert config["expected"]["accuracy"]["top1"] == 0.25
    assert config["expected"]["latency"][0]["machine"].startswith("test-avx2")
    assert [p["stage"] for p in config["lineage"]] == ["train", "export"]


def test_existing_folder_is_refused_in_one_line(onnx_workspace, tmp_path, capsys):
    ws, _, onnx_variant, _ = onnx_workspace
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = bundle_main([onnx_variant.id, "--out", str(out), "--workspace", str(ws.root)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".taken")]  # no temporary folder left
