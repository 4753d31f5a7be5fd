"""`deploybench profile results`: one Markdown file per machine in the store, named by its machine slug."""

import json
import shutil

import pytest

from deploybench.cli.main import main
from deploybench.platform import cpu_model, fingerprint, machine_slug

LIBRARIES = {"torch": "2.9.0", "onnxruntime": "1.23.0"}
# A machine whose stored environment names its kernel flags, one that names none (another CPU model than this
# one, so this machine's flags must not be taken) and this machine (stored without flags: its own are taken).
OTHER = dict(
    cpu_model="Other Vendor CPU 9000", cpu_flags=["avx2", "avx512f", "avx512_vnni", "fma"], gpu="NVIDIA H100 80GB HBM3"
)
OLD = dict(cpu_model="Old CPU", gpu=None)


def _metrics(p50):
    return dict(
        accuracy_top1=0.9108,
        accuracy_top5=0.99,
        test_images=20,
        params=61_706,
        macs=416_520,
        flops=833_040,
        size_bytes=250_000,
        latency_ms_p50=p50,
        latency_ms_p90=p50 * 1.1,
        latency_ms_p99=p50 * 1.3,
        latency_ms_ci95=[p50 * 0.98, p50 * 1.02],
        throughput_per_s=1000 / p50,
        peak_mem_bytes=5_242_880,
        pct_of_peak=38.3,
        stable=True,
        runs=50,
    )


@pytest.fixture
def three_machines(trained_workspace):
    """(workspace, {slug: p50 of its one measured row}): one variant measured on three machines."""
    ws, trained, _ = trained_workspace
    here = dict(cpu_model=cpu_model(), gpu=None)
    rows, p50s = [], {}
    for machine, p50 in ((here, 3.141), (OTHER, 0.123), (OLD, 7.777)):
        env = dict(
            machine,
            physical_cores=4,
            cpu_count=8,
            threads=2,
            python="3.11.7",
            platform="Linux x86_64",
            libraries=LIBRARIES,
            commit="abc123def",
        )
        rows.append(
            dict(
                variant_id=trained.id,
                backend="torch-cpu",
                device="cpu",
                batch_size=1,
                threads=2,
                metrics=_metrics(p50),
                environment=env,
            )
        )
        flags = machine.get("cpu_flags", fingerprint()["cpu_flags"] if machine is here else [])
        p50s[machine_slug(dict(machine, cpu_flags=flags))] = p50
    rows.append(dict(rows[0], backend="ort-cpu", metrics={"skipped": "ort-cpu runs ONNX variants only"}))
    ws.add_measurements(rows)
    return ws, p50s


def test_results_writes_one_file_per_machine(three_machines, tmp_path, capsys):
    ws, p50s = three_machines
    (trained,) = [v for v in ws.variants() if v.stage == "train"]
    assert "other-vendor-9000-avx512-vnni-nvidia-h100-80gb" in p50s and "old-x86" in p50s
    out = tmp_path / "results"
    assert main(["profile", "results", "--workspace", str(ws.root), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{slug}.md" for slug in p50s)
    assert capsys.readouterr().out.split() == [str(out / f"{slug}.md") for slug in sorted(p50s)]
    for slug, p50 in p50s.items():
        text = (out / f"{slug}.md").read_text()
        lines = text.splitlines()
        assert lines[0] == f"# deploybench results: {slug}"
        for needle in [
            "- **CPU**: ",
            "- **Cores**: 4 physical, 8 logical; threads used: 2",
            "torch 2.9.0",
            "onnxruntime 1.23.0",
            "- **Commit**: abc123def",
            f"`deploybench profile results --workspace {ws.root} --out {out}`",
            "## fashion-mnist",
            "### torch-cpu, batch 1",
            "| Model | Chain | Threads | Top-1 % |",
            "| 91.08 |",
            "| 38.3 | 5.0 MB |",
            "- most accurate: lenet train",
            "Training (each trained variant as recorded when it was trained), and the minutes",
            f"| lenet | {trained.id} | cpu | {trained.metrics['train_precision']} | ",
        ]:
            assert needle in text, (slug, needle)
        # Never another machine's numbers in this machine's table.
        assert [f"{other:.3f}" in text for other in p50s.values()] == [other == p50 for other in p50s.values()]
    other = (out / "other-vendor-9000-avx512-vnni-nvidia-h100-80gb.md").read_text()
    assert "Other Vendor CPU 9000; kernel flags: avx2, avx512_vnni, avx512f, fma" in other
    assert "- **GPU**: NVIDIA H100 80GB HBM3" in other and "ort-cpu runs ONNX variants only" not in other
    mine = out / f"{machine_slug(dict(cpu_model=cpu_model(), cpu_flags=fingerprint()['cpu_flags']))}.md"
    assert "Skipped:" in mine.read_text() and "ort-cpu runs ONNX variants only" in mine.read_text()


def test_the_training_table_gives_the_minutes_each_model_took_to_optimize_and_profile(trained_workspace, tmp_path):
    # A model's cost is read from the store, so it holds however many runs the work was split over: the sum of what
    # making each optimized variant took and of each latest measurement's process, on this machine only.
    from deploybench.optimize.base import get_stage
    from deploybench.profile.compare import results_markdown
    from deploybench.profile.runner import profile_variants

    ws, trained, data_dir = trained_workspace
    exported = get_stage("export")().run(ws, trained, data_dir)
    rows = profile_variants(
        ws,
        [trained, exported],
        ["torch-cpu", "ort-cpu"],
        batch_sizes=(1,),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=False,
        log=lambda line: None,
    )
    assert len(rows) == 4 and all(r["metrics"]["job_seconds"] >= 0 for r in rows)
    refused = [r for r in rows if r["metrics"].get("skipped")]  # each backend refuses the other's format unrun
    assert [r["metrics"]["job_seconds"] for r in refused] == [0.0, 0.0]
    assert all(r["metrics"]["job_seconds"] > 0 for r in rows if r not in refused)
    assert exported.metrics["make_seconds"] >= exported.metrics["stage_seconds"] > 0
    slug = machine_slug(dict(cpu_model=cpu_model(), cpu_flags=fingerprint()["cpu_flags"]))

    def line() -> list[str]:
        text = results_markdown(ws, slug)
        (row,) = [x for x in text.splitlines() if x.startswith(f"| lenet | {trained.id} |")]
        return [c.strip() for c in row.strip("|").split("|")]

    cells = line()
    assert cells[9] == "2"  # the trained variant and its export
    assert cells[10] == f"{exported.metrics['make_seconds'] / 60:.1f}"
    profiled = sum(r["metrics"]["job_seconds"] for r in rows)
    assert cells[11] == f"{profiled / 60:.1f}"
    whole = trained.metrics["train_seconds"] + exported.metrics["make_seconds"] + profiled
    assert cells[12] == f"{whole / 60:.1f}"
    assert "--budget-minutes" not in results_markdown(ws, slug)  # trained by epochs: no run to sum

    # Two models trained with a 10-minute budget (as one pipeline run trains them; the same weights under other
    # ids): a row sums theirs, and only theirs.
    def same_weights(folder):
        shutil.copytree(trained.path, folder, dirs_exist_ok=True)
        return dict(train_seconds=120.0)

    recipe = dict(trained.config.get("recipe") or {}, budget_minutes=10.0)
    for seed in (7, 8):
        ws.create_variant(
            model="lenet",
            dataset=trained.dataset,
            stage="train",
            config=dict(trained.config, recipe=dict(recipe, seed=seed)),
            parent=None,
            fmt=trained.format,
            write=same_weights,
        )
    (total,) = [
        x for x in results_markdown(ws, slug).splitlines() if x.startswith("| **2 models, --budget-minutes 10**")
    ]
    cells = [c.strip() for c in total.strip("|").split("|")]
    assert cells[6] == f"{240.0 / 60:.1f}" and cells[9] == "2"
    assert cells[10] == cells[12] == ""  # they have no optimized variants' times: no sums that would pass for them
    ws.add_measurements([dict(rows[0], metrics={k: v for k, v in rows[0]["metrics"].items() if k != "job_seconds"})])
    assert line()[11] == line()[12] == ""  # one latest row without its time: no sum that would pass for the whole


def test_rerunning_replaces_the_files_and_the_default_folder_is_docs_results(
    three_machines, tmp_path, monkeypatch, capsys
):
    ws, p50s = three_machines
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "results", "--workspace", str(ws.root)]) == 0
    folder = tmp_path / "docs" / "results"
    first = {p.name: p.read_text() for p in folder.iterdir()}
    assert sorted(first) == sorted(f"{slug}.md" for slug in p50s)
    assert all(f"`deploybench profile results --workspace {ws.root}` (replaces this file)" in t for t in first.values())
    assert main(["profile", "results", "--workspace", str(ws.root)]) == 0
    assert {p.name: p.read_text() for p in folder.iterdir()} == first  # no dates: the same store, the same files


def test_results_of_an_empty_or_missing_workspace_is_a_one_line_error(trained_workspace, tmp_path, capsys):
    ws, _, _ = trained_workspace
    assert main(["profile", "results", "--workspace", str(ws.root), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no measurements") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
    assert main(["profile", "results", "--workspace", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: workspace")


def _search_summary(machine: str, study: str) -> dict:
    return dict(
        study=study,
        machine=machine,
        target=dict(model="lenet", dataset="fashion-mnist", backend="ort-cpu", batch_size=1),
        budget_pts=1.0,
        counts=dict(complete=5, pruned=3, fail=0),
        base=dict(variant_id="b" * 16, test_top1=0.9000, latency_ms_p50=0.0312),
        trials=[dict(number=0, seconds=90.0), dict(number=1, seconds=30.0), dict(number=2, seconds=None)],
        winner=dict(
            variant_id="w" * 16, recipe="prune 0.65, export", val_drop_pts=0.42, test_drop_pts=0.5, speedup=1.87
        ),
        optimize_all=dict(
            best=dict(variant_id="o" * 16, chain_name="prune-export", val_drop_pts=0.8, test_top1=0.8925, speedup=1.21),
            same_variant=False,
            winner_speedup_over_best=1.54,
        ),
    )


def test_results_list_each_machines_searches_from_their_stored_summaries(three_machines, tmp_path):
    ws, p50s = three_machines
    mine, other = sorted(p50s)[0], sorted(p50s)[1]
    folder = ws.root / "search"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(_search_summary(mine, "study-here")))
    none_within = dict(_search_summary(other, "study-there"), winner=None, optimize_all=None)
    (folder / "b.json").write_text(json.dumps(none_within))
    (folder / "broken.json").write_text("{not json")  # a file that is not a summary is skipped
    out = tmp_path / "results"
    assert main(["profile", "results", "--workspace", str(ws.root), "--out", str(out)]) == 0
    here, there = (out / f"{mine}.md").read_text(), (out / f"{other}.md").read_text()
    row = (
        f"| study-here | ort-cpu | 1 | 1 | 5 / 3 | 2.0 | 0.031 | {'w' * 16}: prune 0.65, export | -0.42 / -0.50 | "
        f"1.87× | "
        f"{'o' * 16}: prune-export | -0.80 / -0.75 | 1.21× | 1.54× |"
    )
    assert row in here.splitlines() and "study-there" not in here
    assert "| study-there |" in there and "none within the budget" in there and "study-here" not in there
    assert "Searches" not in (out / f"{sorted(p50s)[2]}.md").read_text()
