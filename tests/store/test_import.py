"""`deploybench import`: idempotent, refuses conflicting ids and tampered artifacts with nothing written, keeps
each measurement's machine, never puts two machines on one front, and brings paired speed-ups and search summaries
along (a later one replaces an earlier one, never the reverse)."""

import hashlib
import json
import shutil

import pytest

from deploybench.cli.import_cmd import main as import_main
from deploybench.errors import UserError
from deploybench.profile.compare import compare_rows, machines
from deploybench.store import Workspace
from deploybench.store.importer import import_workspace
from deploybench.store.pairs import record_pair, stored_pairs, write_pair
from deploybench.store.search_summaries import stored_summaries, summary_path

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


def _pair(variant, against, speedup):
    return dict(
        variant=variant.id,
        backend="ort-cpu",
        against=against.id,
        against_backend="torch-cpu",
        batch_size=1,
        threads=1,
        machine="other-vendor-cpu-9000",
        speedup=speedup,
    )


def _summary(ws, study, finished_at, winner):
    summary = dict(
        study=study,
        finished_at=finished_at,
        trials=[dict(number=0, seconds=3.0)],
        winner=dict(variant_id=winner),
        storage=f"sqlite:///{ws.root / 'studies.db'}",
        storage_in_workspace=True,
    )
    path = summary_path(ws, study)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(summary))


def test_paired_speedups_and_search_summaries_come_along_once(two_workspaces, capsys):
    here, other = two_workspaces
    trained, onnx_variant = other.variants()
    record_pair(other, _pair(onnx_variant, trained, 2.5))
    _summary(other, "lenet-study", 100.0, onnx_variant.id)
    (other.root / "pairs" / "notes.json").write_text("[1, 2]")  # not a pair: skipped, as every reader does
    undated = dict(_pair(trained, onnx_variant, 9.0), recorded_at="yesterday")  # readers sort by it: not a pair
    (other.root / "pairs" / "undated.json").write_text(json.dumps(undated))
    assert import_main([str(other.root), "--workspace", str(here.root)]) == 0
    assert "1 paired speed-up(s) and 1 search summary(ies)" in capsys.readouterr().out
    assert [(p["variant"], p["speedup"]) for p in stored_pairs(here)] == [(onnx_variant.id, 2.5)]
    assert stored_pairs(here)[0]["recorded_at"] == stored_pairs(other)[0]["recorded_at"]
    (summary,) = stored_summaries(here)
    assert summary["winner"]["variant_id"] == onnx_variant.id and summary["finished_at"] == 100.0
    assert summary["storage_in_workspace"] is False  # its trials are in the other workspace's database
    files = sorted(p.name for p in here.root.rglob("*.json"))
    again = import_workspace(here, other.root)
    assert (again.pairs, again.summaries, again.pairs_present, again.summaries_present) == (0, 0, 1, 1)
    assert sorted(p.name for p in here.root.rglob("*.json")) == files


def test_a_later_pair_or_summary_replaces_an_earlier_one_and_never_the_reverse(two_workspaces):
    here, other = two_workspaces
    trained, onnx_variant = other.variants()
    import_workspace(here, other.root)
    write_pair(other, dict(_pair(onnx_variant, trained, 2.0), recorded_at=10.0))
    write_pair(here, dict(_pair(onnx_variant, trained, 3.0), recorded_at=20.0))  # measured again here, later
    _summary(other, "lenet-study", 30.0, "a" * 16)
    _summary(here, "lenet-study", 40.0, "b" * 16)
    kept = import_workspace(here, other.root)
    assert (kept.pairs, kept.summaries) == (0, 0)
    assert [p["speedup"] for p in stored_pairs(here)] == [3.0]
    assert stored_summaries(here)[0]["winner"]["variant_id"] == "b" * 16
    write_pair(other, dict(_pair(onnx_variant, trained, 4.0), recorded_at=50.0))
    _summary(other, "lenet-study", 60.0, "c" * 16)
    newer = import_workspace(here, other.root)
    assert (newer.pairs, newer.summaries) == (1, 1)
    assert [p["speedup"] for p in stored_pairs(here)] == [4.0]
    assert stored_summaries(here)[0]["winner"]["variant_id"] == "c" * 16


def test_a_pair_of_a_variant_in_neither_workspace_is_refused_with_nothing_written(two_workspaces, capsys):
    here, other = two_workspaces
    trained, onnx_variant = other.variants()
    stray = dict(_pair(onnx_variant, trained, 2.0), against="f" * 16)
    write_pair(other, stray)
    before = snapshot(here)
    assert import_main([str(other.root), "--workspace", str(here.root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "f" * 16 in err and "nothing imported" in err
    assert snapshot(here) == before and not stored_pairs(here)
