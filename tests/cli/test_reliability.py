"""Reliability and security from the command line: every bad input gets a one-line error and a non-zero exit,
and leaves the workspace exactly as it was (every file byte for byte, every table row for row).

Cases: external checkpoints (code-executing pickle, truncated, random bytes, another architecture, another
class count) through every command that takes a model; ONNX files that are malformed or whose external data
points outside their folder; wrong input shapes; unknown names; a full disk and a read-only workspace.
"""

import hashlib
import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deploybench.cli import main as main_cli
from deploybench.cli import optimize as optimize_cli
from deploybench.cli import profile_cmd as profile_cli
from deploybench.cli import train as train_cli
from deploybench.models import create_model


def snapshot(root: Path) -> dict:
    """Every file's sha256 (the database aside) and every row of every table, in order."""
    files = {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("deploybench.db")
    }
    con = sqlite3.connect(root / "deploybench.db")
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    rows = {t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}
    con.close()
    return dict(files=files, rows=rows)


def refused(call, capsys, *expected: str, code: int = 2) -> str:
    """Run a CLI main; assert it exits with `code` and one stderr line holding every `expected` text."""
    assert call() == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    return err


# -- external checkpoints, through every command that takes a model ---------------------------------------------
class Boom:
    """Unpickling this runs `touch MARKER`: a checkpoint that executes code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _bad_checkpoint(kind: str, tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    """(path, texts the error must hold) for each kind of bad checkpoint."""
    path = tmp_path / f"{kind}.pt"
    good = create_model("lenet", 10, 1, 28).state_dict()
    if kind == "executes-code":
        with open(path, "wb") as f:
            pickle.dump({"model": Boom(tmp_path / "executed")}, f)
        return path, ("refused", "not a plain weights file")
    if kind == "code-in-torch-zip":
        torch.save({"model": good, "extra": Boom(tmp_path / "executed")}, path)
        return path, ("refused", "not a plain weights file", "GLOBAL posix.system")
    if kind == "truncated":
        torch.save(good, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path, ("corrupt or truncated",)
    if kind == "random-bytes":
        path.write_bytes(b"\x13" + np.random.RandomState(0).bytes(4095))
        return path, ("is not a checkpoint",)
    if kind == "other-architecture":
        torch.save(create_model("simple-cnn", 10, 1, 28).state_dict(), path)
        return path, ("does not fit this model", "missing", "unexpected")
    if kind == "other-class-count":
        torch.save(create_model("lenet", 100, 1, 28).state_dict(), path)
        return path, ("does not fit this model", "shape mismatch", "(100, 84) vs (10, 84)")
    if kind == "missing-file":
        return tmp_path / "nowhere.pt", ("does not exist",)
    raise AssertionError(kind)


CHECKPOINT_KINDS = [
    "executes-code",
    "code-in-torch-zip",
    "truncated",
    "random-bytes",
    "other-architecture",
    "other-class-count",
    "missing-file",
]
COMMANDS = {
    "train": (train_cli.main, ["--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "1"]),
    "optimize-quantize": (optimize_cli.main, ["quantize", "--model", "lenet", "--dataset", "fashion-mnist"]),
    "optimize-prune": (
        optimize_cli.main,
        ["prune", "--model", "lenet", "--dataset", "fashion-mnist", "--ratio", "0.5"],
    ),
    "optimize-export": (optimize_cli.main, ["export", "--model", "lenet", "--dataset", "fashion-mnist"]),
    "optimize-all": (optimize_cli.main, ["all", "--model", "lenet", "--dataset", "fashion-mnist"]),
    "profile-run": (profile_cli.main, ["run", "--model", "lenet", "--dataset", "fashion-mnist", "--quick"]),
}


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
@pytest.mark.parametrize("command", COMMANDS)
def test_bad_checkpoint_is_refused_everywhere(command, kind, trained_workspace, tmp_path, capsys):
    ws, _, data_dir = trained_workspace
    path, expected = _bad_checkpoint(kind, tmp_path)
    before = snapshot(ws.root)
    main, argv = COMMANDS[command]
    refused(
        lambda: main(argv + ["--checkpoint", str(path), "--workspace", str(ws.root), "--data-dir", str(data_dir)]),
        capsys,
        *expected,
    )
    assert not (tmp_path / "executed").exists(), "the pickle's code ran"
    assert snapshot(ws.root) == before


@pytest.mark.parametrize("kind", ["executes-code", "code-in-torch-zip", "truncated", "random-bytes", "missing-file"])
def test_bad_pretrained_weights_are_refused(kind, trained_workspace, tmp_path, capsys):
    """`train --pretrained` reads its file as safely as `--checkpoint`: one line, no code run, nothing written."""
    ws, _, data_dir = trained_workspace
    path, expected = _bad_checkpoint(kind, tmp_path)
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
        *expected,
    )
    assert not (tmp_path / "executed").exists(), "the pickle's code ran"
    assert snapshot(ws.root) == before


def test_starting_weights_are_known_by_their_bytes_not_their_name(trained_workspace, tmp_path, capsys):
    """Two different files that share a name start two different runs; the same file again finds its run."""
    ws, _, data_dir = trained_workspace
    trained = {}
    for seed in (0, 1, 0):
        torch.manual_seed(seed)
        (tmp_path / str(seed)).mkdir(exist_ok=True)
        torch.save(create_model("lenet", 10, 1, 28).state_dict(), tmp_path / str(seed) / "start.pt")
        assert (
            train_cli.main(
                [
                    "--model",
                    "lenet",
                    "--dataset",
                    "fashion-mnist",
                    "--epochs",
                    "1",
                    "--batch-size",
                    "16",
                    "--checkpoint",
                    str(tmp_path / str(seed) / "start.pt"),
                    "--workspace",
                    str(ws.root),
                    "--data-dir",
                    str(data_dir),
                ]
            )
            == 0
        )
        out = capsys.readouterr()
        started = [v for v in ws.variants("lenet") if v.stage == "train" and v.config["init_checkpoint"]]
        trained.setdefault(seed, []).append((len(started), "already trained" in out.out + out.err))
    assert trained[0] == [(1, False), (2, True)] and trained[1] == [(2, False)]
    runs = [v for v in ws.variants("lenet") if v.stage == "train" and v.config["init_checkpoint"]]
    assert len({v.config["init_checkpoint_sha256"] for v in runs}) == 2
    assert not torch.equal(*(torch.load(v.path / "model.pt", weights_only=True)["0.weight"] for v in runs))


def test_what_is_made_is_known_by_its_data_files(trained_workspace, tmp_path, capsys):
    """The same command on other data files (an edited copy here; tests/fixtures against the real data in
    practice) trains and exports again instead of handing back what the first files gave (profile rows:
    tests/profile/test_runner.py)."""
    import shutil

    ws, trained, data_dir = trained_workspace
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    labels = other / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[8] = (raw[8] + 1) % 10  # one test label
    labels.write_bytes(bytes(raw))
    common = ["--model", "lenet", "--dataset", "fashion-mnist", "--workspace", str(ws.root)]
    train = common + ["--epochs", "1", "--batch-size", "16"]
    assert train_cli.main(train + ["--data-dir", str(data_dir)]) == 0
    assert "already trained" in capsys.readouterr().out
    assert train_cli.main(train + ["--data-dir", str(other)]) == 0
    assert ": trained," in capsys.readouterr().out
    runs = [v for v in ws.variants("lenet") if v.stage == "train"]
    assert len(runs) == 2 and len({v.config["data_sha256"] for v in runs}) == 2
    # Without --variant, optimize takes the run made from the files in --data-dir.
    other_run = next(v for v in runs if v.id != trained.id)
    for d, parent in ((data_dir, trained), (other, other_run)):
        assert optimize_cli.main(["export"] + common + ["--data-dir", str(d)]) == 0
        assert [v.parent_id for v in ws.variants("lenet") if v.stage == "export"][-1] == parent.id
    empty = tmp_path / "third"
    shutil.copytree(other, empty)
    (empty / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw[:8]) + bytes(len(raw) - 8))
    refused(
        lambda: optimize_cli.main(["export"] + common + ["--data-dir", str(empty)]),
        capsys,
        "no trained lenet on fashion-mnist made from the data files in",
    )
    # One parent, exported with each data folder: two exports, each evaluated on its own files.
    for d in (data_dir, other):
        assert optimize_cli.main(["export", "--variant", trained.id] + common + ["--data-dir", str(d)]) == 0
    exports = [v for v in ws.variants("lenet") if v.stage == "export" and v.parent_id == trained.id]
    assert len(exports) == 2 and len({v.config["data_sha256"] for v in exports}) == 2


def test_a_good_checkpoint_is_imported_once_and_used(trained_workspace, tmp_path, capsys, monkeypatch):
    """The same weights through optimize and profile: one imported root variant, validated and evaluated once."""
    import deploybench.train.run as run

    ws, trained, data_dir = trained_workspace
    torch.save(torch.load(trained.path / "model.pt", weights_only=True), tmp_path / "weights.pt")
    common = ["--checkpoint", str(tmp_path / "weights.pt"), "--workspace", str(ws.root), "--data-dir", str(data_dir)]
    assert optimize_cli.main(["export", "--model", "lenet", "--dataset", "fashion-mnist"] + common) == 0
    assert "imported" in capsys.readouterr().err

    def no_second_evaluation(*_a, **_k):
        raise AssertionError("an imported checkpoint was evaluated again")

    monkeypatch.setattr(run, "evaluate", no_second_evaluation)
    assert (
        profile_cli.main(
            [
                "run",
                "--model",
                "lenet",
                "--dataset",
                "fashion-mnist",
                "--quick",
                "--backends",
                "torch-cpu",
                "--batch-sizes",
                "4",
                "--in-process",
            ]
            + common
        )
        == 0
    )
    imported = [v for v in ws.variants("lenet") if v.stage == "import"]
    assert len(imported) == 1 and imported[0].metrics["accuracy_top1"] == trained.metrics["accuracy_top1"]
    export = [v for v in ws.variants("lenet") if v.parent_id == imported[0].id]
    assert [v.stage for v in export] == ["export"]
    assert "already imported" in capsys.readouterr().err
    refused(lambda: optimize_cli.main(["export", "--model", "lenet"] + common), capsys, "needs --dataset")


# -- ONNX files: malformed, or with external data outside their folder --------------------------------------------
def _escaping_onnx(folder: Path, how: str, outside: Path) -> None:
    """Rewrite folder/model.onnx so that its weights are external data at a location that escapes `folder`."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load(str(folder / "model.onnx"))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save_model(model, str(folder / "model.onnx"))  # writes folder/weights.bin
    if how == "symlink":
        (folder / "weights.bin").unlink()
        (folder / "weights.bin").symlink_to(outside)
        return
    location = {"dotdot": f"../{outside.name}", "absolute": str(outside)}[how]
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    (folder / "model.onnx").write_bytes(model.SerializeToString())


ONNX_SPOILS = ["malformed", "truncated", "dotdot", "absolute", "symlink"]


@pytest.fixture
def spoiled_onnx(onnx_workspace, tmp_path):
    """spoiled_onnx(how) -> (ws, variant, data_dir, fifo): the export's files spoiled in place. The 'outside'
    target is a FIFO: anything that opened it to read would hang the test (pytest-timeout fails it)."""
    ws, _, onnx_variant, data_dir = onnx_workspace

    def spoil(how: str):
        folder = onnx_variant.path
        fifo = folder.parent / f"outside-{how}.bin"
        os.mkfifo(fifo)
        if how == "malformed":
            (folder / "model.onnx").write_bytes(b"\x08\x07this is not a protobuf" + os.urandom(64))
        elif how == "truncated":
            data = (folder / "model.onnx").read_bytes()
            (folder / "model.onnx").write_bytes(data[: len(data) // 3])
        else:
            _escaping_onnx(folder, how, fifo)
        return ws, onnx_variant, data_dir, fifo

    return spoil


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ONNX_SPOILS)
@pytest.mark.parametrize("command", ["profile-run", "optimize-int8-ort"])
def test_spoiled_onnx_is_refused_before_reading_outside(spoiled_onnx, how, command, capsys):
    ws, variant, data_dir, fifo = spoiled_onnx(how)
    before = snapshot(ws.root)
    common = ["--workspace", str(ws.root), "--data-dir", str(data_dir)]
    if command == "profile-run":
        argv = [
            "run",
            "--model",
            "lenet",
            "--variant",
            variant.id,
            "--quick",
            "--backends",
            "ort-cpu",
            "--batch-sizes",
            "4",
            "--in-process",
        ]
        main = profile_cli.main
    else:
        argv = ["quantize", "--model", "lenet", "--method", "int8-ort", "--variant", variant.id, "--calib-size", "8"]
        main = optimize_cli.main
    expected = ("outside the model's folder",) if how in ("dotdot", "absolute", "symlink") else ("not a valid ONNX",)
    refused(lambda: main(argv + common), capsys, *expected)
    assert snapshot(ws.root) == before


# -- wrong input shapes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch-cpu", "ort-cpu"])
@pytest.mark.parametrize(
    "shape,detail",
    [
        ((4, 3, 28, 28), "3 channels, the model takes 1"),
        ((4, 1, 32, 32), "got (4, 1, 32, 32)"),
        ((1, 28, 28), "got (1, 28, 28)"),
    ],
)
def test_wrong_input_shape_names_both_shapes(onnx_workspace, backend, shape, detail):
    from deploybench.errors import UserError
    from deploybench.profile.backends import get_backend

    ws, trained, onnx_variant, _ = onnx_workspace
    impl = get_backend(backend)()
    impl.load(onnx_variant if backend.startswith("ort") else trained, 4, 1)
    with pytest.raises(UserError, match=r"expected an input of shape \(batch, 1, 28, 28\)") as err:
        impl.prepare(torch.zeros(shape))
    assert detail in str(err.value)


def test_wrong_input_shape_for_an_onnx_session(onnx_workspace):
    from deploybench.artifacts.runnable import runnable
    from deploybench.errors import UserError

    _, _, onnx_variant, _ = onnx_workspace
    with pytest.raises(UserError, match=r"expected an input of shape \(batch, 1, 28, 28\), got \(2, 3, 28, 28\)"):
        runnable(onnx_variant)(torch.zeros(2, 3, 28, 28))


# -- unknown names list the valid choices ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "main,argv,listed",
    [
        (optimize_cli.main, ["export", "--model", "resnet99"], "unknown model 'resnet99'; choose one of:"),
        (profile_cli.main, ["run", "--model", "resnet99"], "unknown model 'resnet99'; choose one of:"),
        (profile_cli.main, ["run", "--backends", "tensorflow"], "unknown backend 'tensorflow'; choose one of:"),
        (main_cli.main, ["pipeline", "--dataset", "fashion-mnist", "--models", "lenet,nope"], "unknown model 'nope'"),
        (main_cli.main, ["pipeline", "--dataset", "mnist-9", "--models", "lenet"], "unknown dataset 'mnist-9'"),
    ],
)
def test_unknown_names_list_the_choices(main, argv, listed, trained_workspace, capsys):
    ws, _, data_dir = trained_workspace
    before = snapshot(ws.root)
    err = refused(lambda: main(argv + ["--workspace", str(ws.root), "--data-dir", str(data_dir)]), capsys, listed)
    assert "choose one of" in err or "unknown" in err
    assert snapshot(ws.root) == before


# -- options out of range, and targets that cannot be written ----------------------------------------------------
TRAIN = ["--model", "lenet", "--dataset", "fashion-mnist"]
OUT_OF_RANGE = {
    "batch-size-0": (train_cli.main, TRAIN + ["--batch-size", "0"], "--batch-size must be 1 or more, got 0"),
    "batch-size-negative": (train_cli.main, TRAIN + ["--batch-size", "-3"], "--batch-size must be 1 or more"),
    "epochs-0": (train_cli.main, TRAIN + ["--epochs", "0"], "--epochs must be 1 or more, got 0"),
    "lr-negative": (train_cli.main, TRAIN + ["--lr", "-0.1"], "--lr must be above 0"),
    "weight-decay-negative": (train_cli.main, TRAIN + ["--weight-decay", "-1"], "--weight-decay must be 0 or more"),
    "label-smoothing-1.5": (train_cli.main, TRAIN + ["--label-smoothing", "1.5"], "--label-smoothing must be in"),
    "seed-negative": (train_cli.main, TRAIN + ["--seed", "-1"], "--seed must be in [0, 2**32)"),
    "limit-train-negative": (train_cli.main, TRAIN + ["--limit-train", "-5"], "--limit-train must be 0 or more"),
    "device-bogus": (train_cli.main, TRAIN + ["--device", "bogus"], "--device must be cpu or cuda"),
    "device-meta": (train_cli.main, TRAIN + ["--device", "meta"], "--device must be cpu or cuda"),
    "device-cuda-9": (train_cli.main, TRAIN + ["--device", "cuda:9"], "no such CUDA device here"),
    "qat-epochs-0": (
        optimize_cli.main,
        ["quantize", "--model", "lenet", "--method", "qat", "--qat-epochs", "0"],
        "qat needs --qat-epochs of 1 or more",
    ),
    "opset-99": (optimize_cli.main, ["export", "--model", "lenet", "--opset", "99"], "--opset must be between 7"),
    "check-batch-0": (
        profile_cli.main,
        ["check", "--variant", "VID", "--backend", "torch-cpu", "--batch-size", "0"],
        "--batch-size must be at least 1, got 0",
    ),
    "check-threads-0": (
        profile_cli.main,
        ["check", "--variant", "VID", "--backend", "torch-cpu", "--threads", "0"],
        "--threads must be at least 1, got 0",
    ),
    "check-unsupported-format": (
        profile_cli.main,
        ["check", "--variant", "VID", "--backend", "ort-cpu"],
        "ort-cpu cannot run",
        "is not ONNX",
    ),
    "report-out-folder": (profile_cli.main, ["report", "--out", "TMP"], "is a folder; name the file"),
    "report-out-under-a-file": (
        profile_cli.main,
        ["report", "--out", "TMP/file.txt/index.html"],
        "file.txt is a file, not a folder",
    ),
    "pipeline-out-folder": (
        main_cli.main,
        ["pipeline", "--dataset", "fashion-mnist", "--models", "lenet", "--out", "TMP"],
        "is a folder; name the file",
    ),
    "report-out-unwritable": (
        profile_cli.main,
        ["report", "--out", "/proc/index.html"],
        "cannot write /proc/index.html: No such file or directory in /proc",
    ),
    "pipeline-out-unwritable": (
        main_cli.main,
        ["pipeline", "--dataset", "fashion-mnist", "--models", "lenet", "--out", "/proc/index.html"],
        "cannot write /proc/index.html",
    ),
    "check-against-malformed": (
        profile_cli.main,
        ["check", "--variant", "VID", "--backend", "torch-cpu", "--against", "VID"],
        "--against takes VARIANT:BACKEND",
    ),
    "check-against-unknown-variant": (
        profile_cli.main,
        ["check", "--variant", "VID", "--backend", "torch-cpu", "--against", "nope:torch-cpu"],
        "no variant 'nope'",
    ),
    "compare-unknown-model": (
        profile_cli.main,
        ["compare", "--model", "lenet", "lenett"],
        "no variants of 'lenett' in",
        "models here: lenet",
    ),
    "compare-unknown-backend": (profile_cli.main, ["compare", "--backend", "ort"], "unknown backend 'ort'"),
    "pipeline-backend": (
        main_cli.main,
        ["pipeline", "--dataset", "fashion-mnist", "--models", "lenet", "--backends", "torch-cpu,nope"],
        "unknown backend 'nope'",
    ),
}


@pytest.mark.parametrize("case", OUT_OF_RANGE)
def test_options_out_of_range_are_one_line_before_any_work(case, trained_workspace, tmp_path, capsys, monkeypatch):
    """Each is refused in one line before any work: no traceback, and `pipeline --out` not after the whole run."""
    ws, trained, data_dir = trained_workspace
    main, argv, *expected = OUT_OF_RANGE[case]
    if case == "device-cuda-9" and torch.cuda.device_count() > 9:
        pytest.skip("this machine has a tenth GPU")
    (tmp_path / "file.txt").write_text("not a folder")
    argv = [a.replace("VID", trained.id).replace("TMP", str(tmp_path)) for a in argv]
    if main is main_cli.main:  # the pipeline must refuse before it trains: training here is the failure
        import deploybench.pipeline as pipeline

        monkeypatch.setattr(pipeline, "run_pipeline", lambda *a, **k: pytest.fail("the pipeline ran"))
    if case.startswith("check-against"):  # refused before the first timing, the long part of a check
        import deploybench.profile.crosscheck as crosscheck

        monkeypatch.setattr(crosscheck, "cross_check", lambda *a, **k: pytest.fail("the variant was timed"))
    before = snapshot(ws.root)
    refused(lambda: main(argv + ["--workspace", str(ws.root), "--data-dir", str(data_dir)]), capsys, *expected)
    assert snapshot(ws.root) == before
    assert {p.name for p in tmp_path.iterdir()} == {"ws", "file.txt"}  # no report, no temp file left


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["prune", "--finetune-lr", "0"], "--finetune-lr must be above 0, got 0.0"),
        (["prune", "--finetune-minutes", "-1"], "--finetune-minutes must be above 0, got -1.0"),
        (["all", "--finetune-minutes", "0"], "--finetune-minutes must be above 0, got 0.0"),
    ],
    ids=["prune-rate", "prune-minutes", "all-minutes"],
)
def test_prune_fine_tuning_rate_and_time_must_be_positive(trained_workspace, capsys, argv, expected):
    ws, _, data_dir = trained_workspace
    before = snapshot(ws.root)
    argv = argv + ["--model", "lenet", "--ratio", "0.5", "--workspace", str(ws.root), "--data-dir", str(data_dir)]
    refused(lambda: optimize_cli.main(argv), capsys, expected)
    assert snapshot(ws.root) == before


def test_pipeline_batch_sizes_and_epochs_are_checked_before_any_work(trained_workspace, capsys, monkeypatch):
    import deploybench.pipeline as pipeline

    ws, _, data_dir = trained_workspace
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *a, **k: pytest.fail("the pipeline ran"))
    common = [
        "pipeline",
        "--dataset",
        "fashion-mnist",
        "--models",
        "lenet",
        "--workspace",
        str(ws.root),
        "--data-dir",
        str(data_dir),
    ]
    with pytest.raises(SystemExit) as exc:  # not integers: the parser's usage error
        main_cli.main(common + ["--batch-sizes", "1,x"])
    assert exc.value.code == 2
    capsys.readouterr()
    for bad, text in (("0", "batch sizes must be integers of 1 or more, got 0"), (",", "got none")):
        refused(lambda bad=bad: main_cli.main(common + ["--batch-sizes", bad]), capsys, text)
    refused(lambda: main_cli.main(common + ["--epochs", "0"]), capsys, "--epochs must be 1 or more, got 0")


# -- a full disk and a read-only workspace ---------------------------------------------------------------------------
def _mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small or read-only filesystem needs root")
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount tmpfs here: {proc.stderr.decode().strip()}")


@pytest.fixture
def small_disk(trained_workspace, tmp_path):
    """(ws root on a 4 MiB tmpfs holding a copy of the trained workspace, data_dir, mount point)."""
    import shutil

    ws, _, data_dir = trained_workspace
    mnt = tmp_path / "mnt"
    _mount_tmpfs(mnt, "4m")
    try:
        shutil.copytree(ws.root, mnt / "ws")
        yield mnt / "ws", data_dir, mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_clear_error_and_earlier_artifacts_untouched(small_disk, capsys):
    root, data_dir, mnt = small_disk
    before = snapshot(root)
    filler = mnt / "filler"
    with open(filler, "wb") as f:  # leave ~100 KiB: enough for the database, not for an ONNX export
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        f.write(b"\0" * max(0, free - 100 * 1024))
    refused(
        lambda: optimize_cli.main(
            [
                "export",
                "--model",
                "lenet",
                "--dataset",
                "fashion-mnist",
                "--workspace",
                str(root),
                "--data-dir",
                str(data_dir),
            ]
        ),
        capsys,
        "No space left on device",
        code=1,
    )
    filler.unlink()
    assert snapshot(root) == before


def test_read_only_workspace_clear_error(small_disk, capsys):
    root, data_dir, mnt = small_disk
    before = snapshot(root)
    proc = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot remount read-only: {proc.stderr.decode().strip()}")
    refused(
        lambda: optimize_cli.main(
            [
                "export",
                "--model",
                "lenet",
                "--dataset",
                "fashion-mnist",
                "--workspace",
                str(root),
                "--data-dir",
                str(data_dir),
            ]
        ),
        capsys,
        "workspace is not writable: Read-only file system",
        code=1,
    )
    subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)  # SQLite reads a WAL database read-write
    assert snapshot(root) == before


# Runs the real CLI in a child process that sends itself SIGTERM at the `after`-th optimizer step (pruning's
# fine-tuning, which is not training's checkpointed loop).
TERM_CHILD = r"""
import os, signal, sys, torch
from deploybench.cli.main import main
after, calls = int(sys.argv[1]), [0]
real_step = torch.optim.SGD.step
def step(self, *a, **k):
    calls[0] += 1
    if calls[0] == after:
        os.kill(os.getpid(), signal.SIGTERM)
    return real_step(self, *a, **k)
torch.optim.SGD.step = step
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_outside_training_is_one_line_and_leaves_the_workspace_as_it_was(trained_workspace, tmp_path):
    import signal

    from deploybench.cli.common import run

    ws, _, data = trained_workspace
    before = snapshot(ws.root)
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            TERM_CHILD,
            "2",
            "optimize",
            "prune",
            "--model",
            "lenet",
            "--ratio",
            "0.5",
            "--finetune-epochs",
            "1",
            "--workspace",
            str(ws.root),
            "--data-dir",
            str(data),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 143, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("interrupted: stopped by SIGTERM; what was finished")
    assert snapshot(ws.root) == before  # no variant, no temporary folder, no line in the command log
    handler = signal.getsignal(signal.SIGTERM)
    assert run(lambda: 0) == 0 and signal.getsignal(signal.SIGTERM) is handler  # a command leaves it as it was
