"""`deploybench import`: idempotent, refuses conflicting ids and tampered artifacts with nothing written, keeps
each measurement's machine, and never puts two machines on one front."""

import hashlib
import shutil

import pytest

from deploybench.cli.import_cmd import main as import_main
from deploybench.errors import UserError
from deploybench.profile.compare import compare_rows, machines
from deploybench.store import Workspace
from deploybench.store.importer import import_workspace

OTHER_ENV = dict(cpu_model="Other Vendor CPU 9000", cpu_flags=["avx2"], gpu=None)
HERE_ENV = dict(cpu_model="Home Vendor CPU 1", cpu_flags=["avx512f"], gpu=None)


def _measure(ws, variant_id, env, p50):
    ws.add_measurements(
        [
            dict(
                variant_id=variant_id,
                backend="torch-cpu",
                device="cpu",
                batch_size=1,
                threads=1,
                metrics=dict(
                    accuracy_top1=0.5,
                    latency_ms_p50=p50,
                    latency_ms_ci95=[p50, p50],
                    stable=True,
                    macs=100,
                    size_bytes=1000,
                ),
                environment=env,
            )
        ]
    )


def snapshot(ws: Workspace) -> tuple:
    """Everything an import could change: the rows of both tables and every artifact's bytes."""
    files = {
        str(p.relative_to(ws.root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in ws.artifacts.rglob("*")
        if p.is_file()
    }
    variants = sorted((v.id, v.sha256, v.seal) for v in ws.variants())
    rows = sorted((m["variant_id"], m["backend"], str(m["environment"]), m["created_at"]) for m in ws.measurements())
    return variants, rows, files


@pytest.fixture
def two_workspaces(onnx_workspace, tmp_path):
    """(here, other): `other` is a copy of the trained+ONNX workspace measured on another machine; `here` is an
    empty workspace."""
    ws, trained, onnx_variant, _ = onnx_workspace
    _measure(ws, trained.id, OTHER_ENV, 2.0)
    _measure(ws, onnx_variant.id, OTHER_ENV, 1.0)
    return Workspace(tmp_path / "here"), ws


def test_import_twice_is_idempotent(two_workspaces):
    here, other = two_workspaces
    first = import_workspace(here, other.root)
    assert len(first.variants) == 2 and first.measurements == 2
    after_one = snapshot(here)
    second = import_workspace(here, other.root)
    assert second.variants == [] and second.measurements == 0
    assert second.variants_present == 2 and second.measurements_present == 2
    assert snapshot(here) == after_one
    assert all(v.seal is None for v in here.variants())  # an import seals nothing


def test_conflicting_id_is_refused_with_the_workspace_unchanged(two_workspaces, tmp_path, capsys):
    here, other = two_workspaces
    import_workspace(here, other.root)
    conflicting = tmp_path / "conflicting"
    shutil.copytree(other.root, conflicting)
    trained = other.variants()[0]
    with Workspace(conflicting).transaction() as con:
        con.execute("UPDATE variants SET sha256 = ? WHERE id = ?", ("0" * 64, trained.id))
    before = snapshot(here)
    code = import_main([str(conflicting), "--workspace", str(here.root)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and trained.id in err
    assert snapshot(here) == before


def test_tampered_artifact_is_refused(two_workspaces):
    here, other = two_workspaces
    onnx_variant = next(v for v in other.variants() if v.format == "onnx")
    with open(onnx_variant.path / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    before = snapshot(here)
    with pytest.raises(UserError, match=f"variant {onnx_variant.id}.*sha256"):
        import_workspace(here, other.root)
    assert snapshot(here) == before and not here.variants()


def test_measurements_keep_their_machine_and_form_their_own_front(two_workspaces):
    here, other = two_workspaces
    import_workspace(here, other.root)
    trained = here.variants()[0]
    _measure(here, trained.id, HERE_ENV, 5.0)  # slower here: it must not be dominated by the other machine's rows
    assert {m["environment"]["cpu_model"] for m in here.measurements()} == {
        OTHER_ENV["cpu_model"],
        HERE_ENV["cpu_model"],
    }
    slugs = machines(here)
    assert len(slugs) == 2
    rows = compare_rows(here)
    assert {r["machine"] for r in rows} == set(slugs)
    home = [r for r in rows if r["machine"].startswith("home")]
    assert len(home) == 1 and home[0]["pareto"]  # alone on its machine's front
    other_rows = compare_rows(here, machine=next(s for s in slugs if s.startswith("other")))
    assert {r["variant"] for r in other_rows} == {v.id for v in here.variants()}
    assert all(r["baseline"] is None or r["baseline"].startswith(trained.id) for r in other_rows)


def test_compare_cli_filters_by_machine(two_workspaces, capsys):
    from deploybench.cli.profile_cmd import main as profile_main

    here, other = two_workspaces
    import_workspace(here, other.root)
    slug = machines(here)[0]
    assert profile_main(["compare", "--workspace", str(here.root), "--machine", slug, "--format", "json"]) == 0
    assert '"variant"' in capsys.readouterr().out


def test_report_draws_one_latency_front_per_machine(two_workspaces, tmp_path):
    from deploybench.report import build_report

    here, other = two_workspaces
    import_workspace(here, other.root)
    _measure(here, here.variants()[0].id, HERE_ENV, 5.0)
    html = build_report(here, tmp_path / "index.html").read_text()
    for slug in machines(here):
        assert f"torch-cpu · batch 1 · {slug}" in html
