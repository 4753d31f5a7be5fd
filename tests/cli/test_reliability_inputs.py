"""Hostile inputs through the real CLI, round two: each is one `error:` line, a non-zero exit, no traceback, and
the workspace exactly as it was (every file byte for byte, every table row for row).

Cases: checkpoints that are cut short, keyed by integers, sparse, meta, non-finite or of an enormous declared size;
user architectures that are built-ins, take anything, fail to import or take no arguments; an ONNX model with an
operator of a custom domain; invalid choices at the parser; non-finite hyperparameters; a one-class image folder.
"""

import contextlib
import io
import os
import pickletools
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_reliability import COMMANDS, refused, snapshot

from deploybench.cli import main as main_cli
from deploybench.cli import optimize as optimize_cli
from deploybench.cli import profile_cmd as profile_cli
from deploybench.cli import train as train_cli
from deploybench.models import create_model

TRAIN = ["--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "1", "--batch-size", "16"]


def _lenet_state() -> dict:
    return create_model("lenet", 10, 1, 28).state_dict()


def _zip_declaring_huge_entry(path: Path) -> None:
    """A torch.save zip whose tensor entry declares ~4 GiB (local header and central directory alike)."""
    torch.save(_lenet_state(), path)
    data = bytearray(path.read_bytes())
    entry = next(e for e in zipfile.ZipFile(path).infolist() if "/data/" in e.filename)
    struct.pack_into("<II", data, entry.header_offset + 18, 0xFFFFFFF0, 0xFFFFFFF0)
    at = data.find(b"PK\x01\x02")
    while at != -1:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_len].decode() == entry.filename:
            struct.pack_into("<II", data, at + 20, 0xFFFFFFF0, 0xFFFFFFF0)
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def _hostile_checkpoint(kind: str, tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    """(path, texts the error must hold) for each kind of hostile checkpoint."""
    path = tmp_path / f"{kind}.pt"
    state = _lenet_state()
    if kind == "legacy-truncated":  # cut inside the length of a string of the pickle: torch raises struct.error
        torch.save(state, path, _use_new_zipfile_serialization=False)
        data = path.read_bytes()
        stream = io.BytesIO(data)
        for _ in range(3):  # magic number, protocol version, system info; then the pickle of the state dict
            list(pickletools.genops(stream))
        cut = next(pos for op, _, pos in pickletools.genops(stream) if op.name == "BINUNICODE" and pos > 300) + 3
        path.write_bytes(data[:cut])
        return path, ("corrupt or truncated", "unpack requires a buffer of 4 bytes")
    if kind == "legacy-truncated-data":
        torch.save(state, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:-1000])
        return path, ("corrupt or truncated",)
    if kind == "integer-keys":
        torch.save(dict(enumerate(state.values())), path)
        return path, ("keys must be parameter names (str)", "got 0, 1")
    if kind == "mixed-keys":
        torch.save({**state, 7: torch.zeros(1)}, path)
        return path, ("keys must be parameter names (str)", "got 7")
    if kind == "sparse":
        torch.save({**state, "0.weight": state["0.weight"].to_sparse()}, path)
        return path, ("holds sparse tensors", "0.weight")
    if kind == "meta":
        torch.save({k: torch.empty_like(v, device="meta") for k, v in state.items()}, path)
        return path, ("meta (data-less) tensors",)
    if kind in ("nan", "inf"):
        weight = state["0.weight"].clone()
        weight[0, 0, 0, 0] = float(kind)
        torch.save({**state, "0.weight": weight}, path)
        return path, ("non-finite weights", "0.weight")
    if kind == "complex":
        torch.save({**state, "0.weight": state["0.weight"].to(torch.complex64)}, path)
        return path, ("does not fit this model", "dtype mismatch", "0.weight torch.complex64 vs torch.float32")
    if kind == "huge-sparse-file":  # 64 GiB of holes: read into memory, it would exhaust it
        torch.save(state, path, _use_new_zipfile_serialization=False)
        os.truncate(path, 64 * 1024**3)
        return path, ("68,719,476,736 bytes, over the", "it is not read")
    if kind == "zip-entry-declares-huge":
        _zip_declaring_huge_entry(path)
        return path, ("corrupt", "declares 4,294,967,280 bytes, more than the whole file")
    raise AssertionError(kind)


CHECKPOINT_KINDS = [
    "legacy-truncated",
    "legacy-truncated-data",
    "integer-keys",
    "mixed-keys",
    "sparse",
    "meta",
    "nan",
    "inf",
    "complex",
    "huge-sparse-file",
    "zip-entry-declares-huge",
]


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
@pytest.mark.parametrize("command", COMMANDS)
def test_hostile_checkpoint_is_one_line_everywhere(command, kind, trained_workspace, tmp_path, capsys):
    ws, _, data_dir = trained_workspace
    path, expected = _hostile_checkpoint(kind, tmp_path)
    before = snapshot(ws.root)
    main, argv = COMMANDS[command]
    refused(
        lambda: main(argv + ["--checkpoint", str(path), "--workspace", str(ws.root), "--data-dir", str(data_dir)]),
        capsys,
        *expected,
    )
    assert snapshot(ws.root) == before
    assert not [v for v in ws.variants() if v.stage == "import"], "the weights were imported"


@pytest.mark.parametrize("kind", ["integer-keys", "sparse", "nan"])
def test_hostile_pretrained_weights_are_one_line(kind, trained_workspace, tmp_path, capsys):
    ws, _, data_dir = trained_workspace
    path, expected = _hostile_checkpoint(kind, tmp_path)
    before = snapshot(ws.root)
    refused(
        lambda: train_cli.main(
            [
                "--model",
                "resnet18",
                "--dataset",
                "fashion-mnist",
                "--epochs",
                "1",
                "--pretrained",
                str(path),
                "--workspace",
                str(ws.root),
                "--data-dir",
                str(data_dir),
            ]
        ),
        capsys,
        expected[0],
    )
    assert snapshot(ws.root) == before


# A real process: what it prints (torch's warnings included) and the most memory it ever held.
CHILD = r"""
import resource, sys
from deploybench.cli.main import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB
sys.exit(code)
"""


@pytest.mark.parametrize("kind", ["sparse", "huge-sparse-file", "legacy-truncated"])
def test_hostile_checkpoint_in_a_real_process(kind, trained_workspace, tmp_path):
    """The whole of stderr is one line (torch's warning about sparse tensors is not let through), and the 64 GiB
    file is never read: the process stays far below its size."""
    ws, _, data_dir = trained_workspace
    path, expected = _hostile_checkpoint(kind, tmp_path)
    before = snapshot(ws.root)
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            "train",
            *TRAIN,
            "--checkpoint",
            str(path),
            "--workspace",
            str(ws.root),
            "--data-dir",
            str(data_dir),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert all(text in r.stderr for text in expected), r.stderr
    assert int(r.stdout.split()[-1]) < 2 * 1024**2  # KiB: under 2 GiB
    assert snapshot(ws.root) == before


# -- user architectures ---------------------------------------------------------------------------------------------
USER_MODULES = {
    "hostile_syntax": "def net(num_classes, in_channels)\n    return None\n",
    "hostile_raises": "raise RuntimeError('cannot import me')\n",
    "hostile_exits": "import sys\nsys.exit(3)\n",
    "hostile_factories": (
        "import torch.nn as nn\n\n\n"
        "def no_arguments():\n    return nn.Linear(1, 1)\n\n\n"
        "def anything(*args, **kwargs):\n    raise AssertionError('called')\n\n\n"
        "def fails(num_classes, in_channels):\n    raise ValueError('no such layer size')\n\n\n"
        "class NotAModule:\n    def __init__(self, num_classes, in_channels):\n        raise AssertionError('called')\n"
    ),
}
USER_ARCHS = {
    "os:system": "is a builtin_function_or_method, not an nn.Module class or a function",
    "subprocess:run": "must take num_classes and in_channels by name",
    "hostile_syntax:net": "importing hostile_syntax failed: SyntaxError",
    "hostile_raises:net": "importing hostile_raises failed: RuntimeError: cannot import me",
    "hostile_exits:net": "importing hostile_exits failed: SystemExit: 3",
    "hostile_factories:no_arguments": "no_arguments() has no num_classes or in_channels",
    "hostile_factories:anything": "must take num_classes and in_channels by name",
    "hostile_factories:NotAModule": "is a type, not an nn.Module class",
    "hostile_factories:fails": "failed to build: ValueError: no such layer size",
    "hostile_factories:missing": "module hostile_factories has no 'missing'",
    "os.path:": "must be package.module:factory",
}


@contextlib.contextmanager
def calls_recorded(*functions):
    """The functions among `functions` (C or Python) that were called inside the block."""
    codes = {getattr(f, "__code__", None): f for f in functions}
    called = []

    def profile(frame, event, arg):
        if event == "c_call" and any(arg is f for f in functions):
            called.append(arg)
        elif event == "call" and frame.f_code in codes:
            called.append(codes[frame.f_code])

    sys.setprofile(profile)
    try:
        yield called
    finally:
        sys.setprofile(None)


@pytest.mark.parametrize("arch", USER_ARCHS)
@pytest.mark.parametrize("command", ["train", "profile-run"])
def test_hostile_user_architecture_is_one_line_and_never_called(
    arch, command, trained_workspace, tmp_path, capsys, monkeypatch
):
    ws, _, data_dir = trained_workspace
    for name, code in USER_MODULES.items():
        (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = snapshot(ws.root)
    main, argv = COMMANDS[command]
    argv = [arch if a == "lenet" else a for a in argv]
    expected = USER_ARCHS[arch]
    if command == "profile-run" and arch.endswith(":fails"):  # profiling builds no model when there is no variant
        expected = "no variants of hostile_factories:fails"
    with calls_recorded(os.system, subprocess.run) as called:
        refused(lambda: main(argv + ["--workspace", str(ws.root), "--data-dir", str(data_dir)]), capsys, expected)
    assert not called, f"{arch} was called"
    assert snapshot(ws.root) == before


# -- an ONNX model that ONNX Runtime cannot load ---------------------------------------------------------------------
def test_onnx_custom_op_domain_is_one_line(trained_workspace, capsys):
    """An ONNX variant (recorded as any export is) whose logits pass through an operator of a custom domain."""
    import onnx
    from onnx import helper

    from deploybench.optimize.base import model_keys

    ws, trained, data_dir = trained_workspace

    def write(d: Path) -> None:
        torch.onnx.export(
            create_model("lenet", 10, 1, 28).eval(),
            (torch.zeros(2, 1, 28, 28),),
            str(d / "model.onnx"),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        model = onnx.load(str(d / "model.onnx"))
        last = model.graph.node[-1]
        last.output[0] = "raw_logits"  # the logits now pass through the custom operator
        model.graph.node.append(
            helper.make_node("FancyIdentity", ["raw_logits"], ["logits"], domain="com.example.custom")
        )
        model.opset_import.append(helper.make_opsetid("com.example.custom", 1))
        onnx.save(model, str(d / "model.onnx"))

    variant, _ = ws.create_variant(
        model="lenet",
        dataset="fashion-mnist",
        stage="export",
        parent=trained,
        fmt="onnx",
        config=dict(model_keys(trained), opset=17, dynamic=True, custom_op=True),
        write=write,
    )
    before = snapshot(ws.root)
    refused(
        lambda: optimize_cli.main(
            [
                "quantize",
                "--model",
                "lenet",
                "--method",
                "int8-ort",
                "--variant",
                variant.id,
                "--calib-size",
                "8",
                "--workspace",
                str(ws.root),
                "--data-dir",
                str(data_dir),
            ]
        ),
        capsys,
        "int8-ort cannot quantize",
        "ONNX Runtime refuses it",
        "com.example.custom:FancyIdentity",
    )
    assert snapshot(ws.root) == before


# -- invalid choices at the parser: one line, not the usage block -----------------------------------------------------
PARSER_ERRORS = {
    "quantize-method": (
        optimize_cli.main,
        ["quantize", "--model", "lenet", "--method", "int9"],
        "optimize quantize: error: argument --method: invalid choice: 'int9' (choose from 'int8-pt2e'",
    ),
    "calib-method": (
        optimize_cli.main,
        ["quantize", "--model", "lenet", "--calib-method", "median"],
        "optimize quantize: error: argument --calib-method: invalid choice: 'median'",
    ),
    "prune-no-ratio": (
        optimize_cli.main,
        ["prune", "--model", "lenet"],
        "optimize prune: error: the following arguments are required: --ratio",
    ),
    "optimize-subcommand": (
        optimize_cli.main,
        ["shrink"],
        "optimize: error: argument {quantize,prune,export,all}: invalid choice: 'shrink'",
    ),
    "train-optimizer": (
        train_cli.main,
        TRAIN + ["--optimizer", "adam"],
        "train: error: argument --optimizer: invalid choice: 'adam' (choose from 'sgd', 'adamw')",
    ),
    "train-epochs-not-int": (
        train_cli.main,
        TRAIN + ["--epochs", "two"],
        "train: error: argument --epochs: invalid int value: 'two'",
    ),
    "compare-format": (
        profile_cli.main,
        ["compare", "--format", "xml"],
        "profile compare: error: argument --format: invalid choice: 'xml'",
    ),
    "profile-batch-sizes": (
        profile_cli.main,
        ["run", "--batch-sizes", "1,x"],
        "profile run: error: argument --batch-sizes: expected comma-separated integers",
    ),
    "deploybench-command": (main_cli.main, ["pipelines"], "deploybench: error: argument command: invalid choice"),
    "deploybench-routed": (
        main_cli.main,
        ["optimize", "quantize", "--model", "lenet", "--method", "int9"],
        "optimize quantize: error: argument --method: invalid choice",
    ),
}


@pytest.mark.parametrize("case", PARSER_ERRORS)
def test_parser_errors_are_one_line(case, trained_workspace, capsys):
    ws, _, data_dir = trained_workspace
    main, argv, expected = PARSER_ERRORS[case]
    before = snapshot(ws.root)
    with pytest.raises(SystemExit) as stop:
        main(argv + ["--workspace", str(ws.root), "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith(expected) and err.count("\n") == 1 and "usage:" not in err, err
    assert snapshot(ws.root) == before


# -- hyperparameters that train garbage -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option,value,expected",
    [
        ("--lr", "inf", "--lr must be above 0 and finite, got inf"),
        ("--lr", "nan", "--lr must be above 0 and finite, got nan"),
        ("--lr=-inf", None, "--lr must be above 0 and finite, got -inf"),
        ("--weight-decay", "nan", "--weight-decay must be 0 or more and finite, got nan"),
        ("--weight-decay", "inf", "--weight-decay must be 0 or more and finite, got inf"),
        ("--label-smoothing", "nan", "--label-smoothing must be in [0, 1), got nan"),
        ("--label-smoothing", "1", "--label-smoothing must be in [0, 1), got 1.0"),
    ],
)
def test_non_finite_hyperparameters_are_refused(option, value, expected, trained_workspace, capsys):
    ws, _, data_dir = trained_workspace
    before = snapshot(ws.root)
    option = [option] if value is None else [option, value]
    refused(
        lambda: train_cli.main(TRAIN + option + ["--workspace", str(ws.root), "--data-dir", str(data_dir)]),
        capsys,
        expected,
    )
    assert snapshot(ws.root) == before


# -- an image folder of one class -------------------------------------------------------------------------------------
def _image_folder(root: Path, classes: dict[str, int], splits=("train", "test")) -> Path:
    """root/<split>/<class>/<i>.png with `classes[class]` images each (a class of 0 gets a text file only)."""
    rng = np.random.RandomState(0)
    for split in splits:
        for cls, n in classes.items():
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True)
            (folder / "README.txt").write_text("not an image")
            for i in range(n):
                Image.fromarray(rng.randint(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "layout,expected",
    [
        ("train-test", "has 1 class (cats); a classifier needs at least two"),
        ("pool", "has 1 class (cats); a classifier needs at least two"),
        ("second-class-empty", "has 1 class (cats); a classifier needs at least two"),
    ],
)
def test_one_class_image_folder_is_refused(layout, expected, trained_workspace, tmp_path, capsys):
    ws, _, data_dir = trained_workspace
    if layout == "train-test":
        folder = _image_folder(tmp_path / "pets", {"cats": 4})
    elif layout == "pool":
        folder = _image_folder(tmp_path / "pets", {"cats": 6}, splits=("",))
    else:
        folder = _image_folder(tmp_path / "pets", {"cats": 4, "dogs": 0})
    before = snapshot(ws.root)
    refused(
        lambda: train_cli.main(
            [
                "--model",
                "lenet",
                "--dataset",
                f"imagefolder:{folder}",
                "--epochs",
                "1",
                "--workspace",
                str(ws.root),
                "--data-dir",
                str(data_dir),
            ]
        ),
        capsys,
        expected,
    )
    assert snapshot(ws.root) == before
