"""A workspace's artifacts are input: from the command line, no planted artifact runs code, whatever its format and
whichever command loads it.

Cases: a variant's files changed after the store recorded them (replaced, added, removed, a symlink out of the
folder) are refused before anything is loaded; the store and the file replaced together (a workspace from
elsewhere) still run nothing: a torch.export program is refused as not made here, a weights file by the safe
unpickler, an ONNX file by its check; with `--trust-artifacts`, every way a torch.export program can carry code
(a pickled weight, pickled sample inputs, an opaque constant, guards code, a symbolic shape) is still refused.
An untampered workspace profiles every format, and a program made elsewhere loads once trusted.
"""

import hashlib
import io
import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from test_reliability import Boom, refused, snapshot

from deploybench.artifacts.verify import TRUST_ENV
from deploybench.cli import main as main_cli
from deploybench.cli import optimize as optimize_cli
from deploybench.cli import profile_cmd as profile_cli
from deploybench.store.provenance import KEY_ENV, files_digest

FORMATS = [
    "torch-state",
    "torch-pruned",
    "torch-bf16",
    "torch-fp16",
    "torch-export",
    "torch-export-int8",
    "onnx",
    "onnx-int8",
]
PROGRAMS = ["torch-export", "torch-export-int8"]
# How a torch.export program carries code; each runs it through plain torch.export.load (see the control test).
PROGRAM_ATTACKS = ["pickled-weight", "sample-inputs", "opaque-constant", "guards-code", "sympy"]
PROFILE = ["run", "--quick", "--backends", "torch-cpu,ort-cpu", "--batch-sizes", "4", "--in-process"]


@pytest.fixture(scope="session")
def _every_format(tmp_path_factory, tiny_fashion_mnist):
    """A workspace holding lenet (trained as `pipeline --epochs 1` trains it) and one variant of every format;
    returns (root, {format: variant id}). Made once per session through the CLI."""
    from deploybench.artifacts.formats import load_module, shaped_state
    from deploybench.optimize.base import model_keys
    from deploybench.store import Workspace
    from deploybench.train.recipes import default_recipe
    from deploybench.train.run import train_model

    root = tmp_path_factory.mktemp("formats") / "ws"
    ws = Workspace(root)
    trained, _ = train_model(
        ws,
        "lenet",
        "fashion-mnist",
        default_recipe("lenet", epochs=1),
        data_dir=tiny_fashion_mnist,
        resume=None,
        log=lambda *_: None,
    )
    common = ["--model", "lenet", "--workspace", str(root), "--data-dir", str(tiny_fashion_mnist)]
    for argv in (
        ["quantize", "--method", "dynamic"],
        ["quantize", "--method", "int8-pt2e", "--calib-size", "8"],
        ["quantize", "--method", "bf16"],
        ["prune", "--ratio", "0.5", "--finetune-epochs", "1"],
        ["quantize", "--method", "int8-ort", "--calib-size", "8"],
    ):
        assert optimize_cli.main(argv + common) == 0, argv

    def write_fp16(d: Path) -> None:  # the fp16 stage needs a GPU; its file is the same shaped state in fp16
        torch.save(shaped_state(load_module(trained).half()), d / "model.pt")

    ws.create_variant(
        model="lenet",
        dataset=trained.dataset,
        stage="quantize",
        parent=trained,
        fmt="torch-fp16",
        config=dict(model_keys(trained), method="fp16"),
        write=write_fp16,
    )
    ids = {}
    for v in ws.variants("lenet"):
        ids.setdefault(v.format, v.id)
    assert set(ids) == set(FORMATS), ids
    return root, ids


@pytest.fixture
def every_format(_every_format, tmp_path, tiny_fashion_mnist, monkeypatch):
    """(root, {format: Variant}, data_dir, marker): a private copy of the workspace; `marker` is the file a
    planted artifact's code would create. No --trust-artifacts is left behind by a test."""
    from deploybench.store import Workspace

    monkeypatch.delenv(TRUST_ENV, raising=False)
    src, ids = _every_format
    root = tmp_path / "ws"
    shutil.copytree(src, root)
    ws = Workspace(root)
    return root, {fmt: ws.get_variant(vid) for fmt, vid in ids.items()}, tiny_fashion_mnist, tmp_path / "executed"


# -- planting ----------------------------------------------------------------------------------------------------
def _torch_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def hostile_program(src: Path, dst: Path, how: str, marker: Path) -> None:
    """Rewrite the torch.export archive `src` as `dst`, carrying code (`touch marker`) in the way `how` names."""
    with zipfile.ZipFile(src) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    top = next(iter(entries)).split("/")[0]
    program = f"{top}/models/model.json"
    if how == "pickled-weight":  # torch.load(weights_only=False) of a tensor-subclass weight
        name = f"{top}/data/weights/model_weights_config.json"
        config = json.loads(entries[name])
        meta = next(iter(config["config"].values()))
        meta["use_pickle"] = True
        entries[f"{top}/data/weights/{meta['path_name']}"] = _torch_pickle(Boom(marker))
        entries[name] = json.dumps(config).encode()
    elif how == "sample-inputs":  # the safe unpickler fails, torch falls back to weights_only=False
        entries[f"{top}/data/sample_inputs/model.pt"] = _torch_pickle(Boom(marker))
    elif how == "opaque-constant":  # pickle.loads
        name = f"{top}/data/constants/model_constants_config.json"
        config = json.loads(entries[name])
        config["config"]["evil"] = dict(path_name="opaque_obj_0", is_param=False, use_pickle=True, tensor_meta=None)
        entries[name] = json.dumps(config).encode()
        entries[f"{top}/data/constants/opaque_obj_0"] = pickle.dumps(Boom(marker))
    elif how == "guards-code":  # exec'd by ExportedProgram.module(), run by every forward
        doc = json.loads(entries[program])
        doc["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]
        entries[program] = json.dumps(doc).encode()
    elif how == "sympy":  # sympy.sympify evals a symbolic shape
        symbol = json.dumps("Symbol('s31', positive=True, integer=True)")[1:-1]
        text = entries[program].decode()
        assert symbol in text
        entries[program] = text.replace(symbol, f"__import__('os').system('touch {marker}')", 1).encode()
    else:
        raise AssertionError(how)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def plant(variant, marker: Path, how: str = "pickled-weight") -> None:
    """Replace the variant's model file by one whose loading would run `touch marker` (ONNX cannot carry code:
    its model.onnx becomes the pickle)."""
    if variant.format in PROGRAMS:
        path = variant.path / "model.pt2"
        hostile_program(path, path, how, marker)
    elif variant.format.startswith("onnx"):
        (variant.path / "model.onnx").write_bytes(pickle.dumps({"model": Boom(marker)}))
    else:
        good = torch.load(variant.path / "model.pt", weights_only=True)
        torch.save({"model": good, "extra": Boom(marker)}, variant.path / "model.pt")


def edit_onnx(variant) -> None:
    """Change a variant's ONNX file into another valid one (its doc string), so that only the digest tells."""
    import onnx

    model = onnx.load(str(variant.path / "model.onnx"), load_external_data=False)
    model.doc_string = "edited"
    (variant.path / "model.onnx").write_bytes(model.SerializeToString())


def rerecord(root: Path, variant) -> None:
    """Write the variant's present files and digest into the store, as a workspace whose store and files were
    replaced together holds them."""
    files = sorted(p.relative_to(variant.path).as_posix() for p in variant.path.rglob("*") if p.is_file())
    digest = files_digest({f: hashlib.sha256((variant.path / f).read_bytes()).hexdigest() for f in files})
    con = sqlite3.connect(root / "deploybench.db")
    con.execute("UPDATE variants SET sha256 = ?, files = ? WHERE id = ?", (digest, json.dumps(files), variant.id))
    con.commit()
    con.close()


def common(root: Path, data_dir: Path) -> list[str]:
    return ["--workspace", str(root), "--data-dir", str(data_dir)]


# Per format, the optimize command that loads it as its input (and makes nothing the fixture made).
OPTIMIZE = {fmt: ["export"] for fmt in FORMATS}
OPTIMIZE["torch-state"] = ["quantize", "--method", "dynamic-pt2e"]
OPTIMIZE["onnx"] = OPTIMIZE["onnx-int8"] = ["quantize", "--method", "int8-ort", "--calib-size", "4"]


def command(name: str, variant, root: Path, data_dir: Path, *extra: str):
    """A call of the CLI that loads `variant`: `profile run --variant`, its `optimize` command or `bundle` (into a
    folder beside the workspace)."""
    if name == "bundle":
        argv = ["bundle", variant.id, "--out", str(root.parent / "bundle")]
        return lambda: main_cli.main(argv + common(root, data_dir) + list(extra))
    if name == "profile-run":
        argv = PROFILE + ["--variant", variant.id]
        return lambda: profile_cli.main(argv + common(root, data_dir) + list(extra))
    argv = OPTIMIZE[variant.format] + ["--model", "lenet", "--variant", variant.id]
    return lambda: optimize_cli.main(argv + common(root, data_dir) + list(extra))


# -- files changed after the store recorded them ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["profile-run", "optimize", "bundle"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_changed_artifact_is_refused_before_loading(fmt, name, every_format, capsys):
    root, variants, data_dir, marker = every_format
    variant = variants[fmt]
    edit_onnx(variant) if fmt.startswith("onnx") else plant(variant, marker)
    before = snapshot(root)
    refused(
        command(name, variant, root, data_dir),
        capsys,
        f"variant {variant.id}: its files do not match the "
        "digest the store recorded (the bytes of its files changed); refusing to load it",
    )
    assert not marker.exists(), "the planted artifact's code ran"
    assert snapshot(root) == before and not (root.parent / "bundle").exists()


def _tamper(variant, how: str, outside: Path) -> tuple[str, str]:
    """Change the variant's folder as `how` says; returns (what the refusal must say differs, the file's name)."""
    name = variant.files[0]
    if how == "added":
        (variant.path / "extra.pt").write_bytes(b"more")
        return "not recorded: extra.pt", "extra.pt"
    if how == "removed":
        (variant.path / name).unlink()
        return f"missing: {name}", name
    if how == "symlink-out":
        os.mkfifo(outside)  # anything that opened it to read would hang the test (pytest-timeout fails it)
        (variant.path / name).unlink()
        (variant.path / name).symlink_to(outside)
        return f"{name} is a symlink to a path outside the variant's folder", name
    raise AssertionError(how)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["profile-run", "optimize"])
@pytest.mark.parametrize("how", ["added", "removed", "symlink-out"])
@pytest.mark.parametrize("fmt", ["torch-state", "torch-export"])
def test_files_added_removed_or_linked_out_are_refused(fmt, how, name, every_format, tmp_path, capsys):
    root, variants, data_dir, marker = every_format
    variant = variants[fmt]
    expected, file_name = _tamper(variant, how, tmp_path / "outside.fifo")
    before = snapshot(root)
    if name == "optimize":
        refused(
            command(name, variant, root, data_dir),
            capsys,
            f"variant {variant.id}: its files do not match the "
            f"digest the store recorded ({expected}); refusing to load it",
        )
    else:  # profiling checks that every listed file is there first, in words of its own
        refused(command(name, variant, root, data_dir), capsys, f"variant {variant.id}", file_name)
    assert snapshot(root) == before


# -- the store and the file replaced together ------------------------------------------------------------------
REFUSALS = {
    "torch-export": "was not made by this user on this machine",
    "onnx": "is not a valid ONNX model",
    "torch-state": "not a plain weights file that loads with weights_only=True",
}


@pytest.mark.parametrize("name", ["profile-run", "optimize"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_replaced_store_and_artifact_run_no_code(fmt, name, every_format, capsys):
    root, variants, data_dir, marker = every_format
    variant = variants[fmt]
    plant(variant, marker)
    rerecord(root, variant)
    before = snapshot(root)
    kind = "torch-export" if fmt in PROGRAMS else "onnx" if fmt.startswith("onnx") else "torch-state"
    refused(command(name, variant, root, data_dir), capsys, REFUSALS[kind])
    assert not marker.exists(), "the planted artifact's code ran"
    assert snapshot(root) == before


@pytest.mark.parametrize("how", PROGRAM_ATTACKS)
@pytest.mark.parametrize("fmt", PROGRAMS)
def test_trusted_program_still_runs_no_code(fmt, how, every_format, capsys):
    """--trust-artifacts lets a program made elsewhere load, but never lets it run code."""
    root, variants, data_dir, marker = every_format
    variant = variants[fmt]
    plant(variant, marker, how)
    rerecord(root, variant)
    before = snapshot(root)
    refused(
        command("profile-run", variant, root, data_dir, "--trust-artifacts"),
        capsys,
        f"variant {variant.id}: {variant.path / 'model.pt2'} refused:",
    )
    assert not marker.exists(), "the planted program's code ran"
    assert snapshot(root) == before


CONTROL = r"""
import sys, torch
import torchao.quantization.pt2e
for path in sys.argv[1:]:
    try:
        torch.export.load(path).module()(torch.zeros(2, 1, 28, 28))
    except Exception:
        pass
"""


@pytest.mark.timeout(300)
def test_planted_programs_do_run_code_through_plain_torch_export_load(every_format, tmp_path):
    """The control: each planted program runs its code when torch.export.load reads it as torch does by itself,
    so the tests above refuse real attacks."""
    _, variants, _, _ = every_format
    for how in PROGRAM_ATTACKS:
        hostile_program(
            variants["torch-export"].path / "model.pt2", tmp_path / f"{how}.pt2", how, tmp_path / f"{how}.ran"
        )
    subprocess.run(
        [sys.executable, "-c", CONTROL] + [str(tmp_path / f"{how}.pt2") for how in PROGRAM_ATTACKS],
        capture_output=True,
        timeout=240,
    )
    ran = [how for how in PROGRAM_ATTACKS if (tmp_path / f"{how}.ran").exists()]
    assert ran == PROGRAM_ATTACKS, "some planted programs ran no code through plain torch.export.load"


# -- every command over a workspace whose every format is planted ----------------------------------------------
@pytest.mark.timeout(600)
@pytest.mark.parametrize("planted", ["every-format", "programs-and-store"])
def test_pipeline_over_planted_artifacts_runs_no_code(planted, every_format, tmp_path, capsys):
    """`every-format`: every file changed (the chains refuse the trained root, profiling the first spoiled file);
    `programs-and-store`: the programs and their records replaced (optimize all reuses them, profiling refuses
    them as made elsewhere)."""
    from deploybench.store import Workspace

    root, variants, data_dir, marker = every_format
    for fmt, variant in variants.items():
        if planted == "every-format" or fmt in PROGRAMS:
            plant(variant, marker)
        if planted == "programs-and-store" and fmt in PROGRAMS:
            rerecord(root, variant)
    argv = [
        "pipeline",
        "--dataset",
        "fashion-mnist",
        "--models",
        "lenet",
        "--epochs",
        "1",
        "--quick",
        "--backends",
        "torch-cpu,ort-cpu",
        "--batch-sizes",
        "4",
        "--out",
        str(tmp_path / "report" / "index.html"),
    ]
    assert main_cli.main(argv + common(root, data_dir)) == 1  # what failed is reported, as `optimize all` does
    out = capsys.readouterr().out
    assert not marker.exists(), "a planted artifact's code ran"
    assert [v.stage for v in Workspace(root).variants("lenet")].count("train") == 1  # the planted root was used
    failed = [line for line in out.splitlines() if line.startswith("failed: lenet: profile: ")]
    expected = (
        "its files do not match the digest"
        if planted == "every-format"
        else "was not made by this user on this machine"
    )
    assert len(failed) == 1 and ("is not a valid ONNX model" in failed[0] or expected in failed[0]), out
    assert expected in out


@pytest.mark.parametrize("argv", [["report", "--out", "REPORT"], ["compare", "--format", "json"]])
def test_report_and_compare_over_planted_artifacts_run_no_code(argv, every_format, tmp_path, capsys):
    """The report and the comparison are built from the store alone: they open no model file."""
    root, variants, data_dir, marker = every_format
    for variant in variants.values():
        plant(variant, marker)
    argv = [str(tmp_path / "report.html") if a == "REPORT" else a for a in argv]
    assert profile_cli.main(argv + common(root, data_dir)) == 0
    assert not marker.exists(), "a planted artifact's code ran"


# -- what is not tampered with still loads -------------------------------------------------------------------------
def test_untampered_workspace_profiles_every_format(every_format, capsys):
    root, variants, data_dir, _ = every_format
    assert profile_cli.main(PROFILE + ["--model", "lenet"] + common(root, data_dir)) == 0
    from deploybench.store import Workspace

    ws = Workspace(root)
    for fmt, variant in variants.items():
        rows = ws.measurements(variant.id)
        assert rows and not any(r["metrics"].get("error") for r in rows), (fmt, rows)
        assert any(r["metrics"].get("latency_ms_p50") for r in rows), (fmt, rows)


@pytest.mark.timeout(300)
def test_program_made_elsewhere_loads_only_when_trusted(every_format, tmp_path, monkeypatch, capsys):
    """Under another account's key the workspace is one from elsewhere: its programs are refused, its weights load;
    `--trust-artifacts` loads the programs, in profiling's child processes too."""
    root, variants, data_dir, _ = every_format
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "another-key"))
    program = variants["torch-export-int8"]
    before = snapshot(root)
    refused(
        command("profile-run", program, root, data_dir),
        capsys,
        f"variant {program.id}: this torch-export-int8 program was not made by this user on this machine",
        "pass --trust-artifacts",
    )
    assert snapshot(root) == before
    assert command("profile-run", variants["torch-state"], root, data_dir)() == 0
    isolated = ["run", "--quick", "--backends", "torch-cpu", "--batch-sizes", "4", "--variant", program.id]
    assert profile_cli.main(isolated + ["--trust-artifacts"] + common(root, data_dir)) == 0
    capsys.readouterr()


# -- the commands that hand variants over or show them: bundle and app -----------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_app_never_runs_a_planted_artifact(fmt, every_format, tmp_path):
    from PIL import Image

    from deploybench.app.predict import predict
    from deploybench.errors import UserError
    from deploybench.store import Workspace

    root, variants, data_dir, marker = every_format
    variant = variants[fmt]
    plant(variant, marker)
    rerecord(root, variant)  # even with the store's record replaced too
    before = snapshot(root)
    with pytest.raises(UserError):
        predict(Workspace(root, create=False), data_dir, [variant.id], image=Image.new("L", (28, 28)))
    assert not marker.exists(), "the planted artifact's code ran"
    assert snapshot(root) == before
