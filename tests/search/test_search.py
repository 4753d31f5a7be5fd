"""`deploybench.search`: a tiny search end to end (lenet on the tiny Fashion-MNIST, 3 trials, low fidelity, the
quick latency protocol), a repeated recipe that makes no new variant, a new study starting from `optimize all`'s
recipes, the space per backend, the promotion rule, and a worker on other hardware refused."""

import json
import shutil
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from deploybench.artifacts.formats import ONNX_FORMATS
from deploybench.errors import UserError
from deploybench.platform import fingerprint, physical_cores
from deploybench.report import build_report
from deploybench.report.search_sections import search_report_sections
from deploybench.search import BACKEND_SPACES, Fidelity, SearchSpec, TrialRecipe, run_search, search_space, summary_path
from deploybench.search import study as study_module
from deploybench.search.fidelity import promotion
from deploybench.search.space import menu_seeds, output_format
from deploybench.search.study import SearchInterrupted
from deploybench.store import Workspace

LOW = Fidelity(screen_fraction=0.5, screen_val_images=3)
# A budget of 100 points: on 6 validation images of a 1-epoch lenet any loss is a multiple of 16.7 points.
# The sampler's own draws: the menu's recipes first (`menu_seeds`) are tested on their own below.
TINY = dict(
    model="lenet",
    dataset="fashion-mnist",
    backend="ort-cpu",
    budget_pts=100.0,
    quick=True,
    fidelity=LOW,
    menu_seeds=False,
)


def _storage(root) -> str:
    return f"sqlite:///{root / 'studies.db'}"


@pytest.fixture(scope="module")
def searched(_trained_lenet_workspace, tiny_fashion_mnist, tmp_path_factory):
    """(workspace root, trained variant id, data_dir, summary) after a 3-trial search (made once per module)."""
    src, vid = _trained_lenet_workspace
    root = tmp_path_factory.mktemp("searched") / "ws"
    shutil.copytree(src, root)
    summary = run_search(Workspace(root), SearchSpec(**TINY, trials=3), tiny_fashion_mnist, log=lambda line: None)
    return root, vid, tiny_fashion_mnist, summary


@pytest.fixture
def searched_copy(searched, tmp_path):
    root, vid, data_dir, summary = searched
    shutil.copytree(root, tmp_path / "ws")
    return Workspace(tmp_path / "ws"), vid, data_dir, summary


@pytest.mark.timeout(600)
def test_a_tiny_search_end_to_end(searched):
    root, trained_id, _, summary = searched
    ws = Workspace(root)
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] == 3 and summary["counts"]["fail"] == 0
    study = optuna.load_study(study_name=summary["study"], storage=_storage(root))
    assert study.user_attrs["machine_fingerprint"] == fingerprint(physical_cores())
    assert study.user_attrs["target"]["command"] == "search"
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done
    for t in done:  # every trial's variant is an ordinary variant, made by the stages from the trained one
        v = ws.get_variant(t.user_attrs["variant_id"])
        assert v.format in ONNX_FORMATS and ws.lineage(v)[0].id == trained_id
        assert t.values[0] == t.user_attrs["result"]["speedup"] > 0
    screened = [t for t in study.trials if "rung0" in t.user_attrs]
    assert screened, "seed 0 draws recipes that fine-tune: some are screened"
    for t in screened:  # rung 0: one epoch over half the training images, 3 validation images
        low = ws.lineage(ws.get_variant(t.user_attrs["rung0"]["variant_id"]))
        prune = next(v for v in low if v.stage == "prune")
        assert (prune.config["finetune_epochs"], prune.config["finetune_fraction"]) == (1, 0.5)
        assert t.user_attrs["rung0"]["val_images"] == 3
    fastest = max(done, key=lambda t: (t.values[0], t.values[1]))
    assert summary["winner"]["variant_id"] == fastest.user_attrs["variant_id"]
    assert summary["front"] and all(
        r["test_top1"] == ws.get_variant(r["variant_id"]).metrics["accuracy_top1"] for r in summary["front"]
    )
    best = summary["optimize_all"]["best"]
    assert best is not None and summary["optimize_all"]["winner_speedup_over_best"] > 0
    assert json.loads(summary_path(ws, summary["study"]).read_text())["winner"] == summary["winner"]
    (section,) = search_report_sections(ws)
    assert section["front"] == summary["front"] and "<svg" in section["front_svg"] and "<svg" in section["history_svg"]
    report = build_report(ws, ws.root.parent / "report.html").read_text()
    assert '<h2 id="search">Searches</h2>' in report and summary["winner"]["variant_id"][:8] in report


@pytest.mark.timeout(600)
def test_a_trial_repeating_a_recipe_makes_no_new_variant(searched_copy):
    ws, _, data_dir, summary = searched_copy
    study = optuna.load_study(study_name=summary["study"], storage=_storage(ws.root))
    first = next(t for t in study.trials if t.state == TrialState.COMPLETE)
    study.enqueue_trial(first.params)  # the same recipe: its outcome is taken over
    other_threads = "threads" in first.params
    if other_threads:  # the same variant timed at other threads: made by the stages, found by its id
        study.enqueue_trial(dict(first.params, threads=2 if first.params["threads"] == 1 else 1))
    variants = {v.id for v in ws.variants()}
    run_search(ws, SearchSpec(**TINY, trials=4 + other_threads, resume=True), data_dir, log=lambda line: None)
    assert {v.id for v in ws.variants()} == variants
    again = optuna.load_study(study_name=summary["study"], storage=_storage(ws.root)).trials
    assert again[3].user_attrs["same_as"] == first.number
    assert again[3].user_attrs["variant_id"] == first.user_attrs["variant_id"] and again[3].values == first.values
    if other_threads:  # timed again (at rung 0 when the recipe is screened, where it may now rank out)
        rung = "result" if "result" in again[4].user_attrs else "rung0"
        timed = again[4].user_attrs[rung]
        assert timed["variant_id"] == first.user_attrs[rung]["variant_id"]
        assert timed["threads"] != first.params["threads"] and "same_as" not in again[4].user_attrs


@pytest.mark.timeout(600)
def test_a_new_study_runs_the_menus_recipes_first_and_finds_their_variants(searched_copy):
    ws, _, data_dir, summary = searched_copy
    # The search compared its winner with `optimize all`, so the menu's variants are in the store.
    menu = {c["chain_name"]: c["variant_id"] for c in summary["optimize_all"]["candidates"]}
    assert set(menu) == {"export", "quantize:int8-ort", "prune→export", "prune→export→int8-ort"}
    variants = {v.id for v in ws.variants()}
    spec = SearchSpec(**dict(TINY, menu_seeds=True), trials=len(menu), study="from-the-menu")
    run_search(ws, spec, data_dir, log=lambda line: None)
    trials = optuna.load_study(study_name="from-the-menu", storage=_storage(ws.root)).trials
    assert [t.user_attrs["menu_chain"] for t in trials] == list(menu)
    for t in trials:  # the menu's own variant, found; not screened (optimize all makes it at full fidelity)
        assert t.state == TrialState.COMPLETE and "rung0" not in t.user_attrs
        assert t.user_attrs["variant_id"] == menu[t.user_attrs["menu_chain"]]
    assert {v.id for v in ws.variants()} == variants


def test_the_menus_recipes_are_expressed_in_each_backends_space():
    def seeds(backend):
        dims = search_space(backend, max_threads=2, has_batchnorm=True, layer_kinds=frozenset(), layers=5)
        return dict(menu_seeds(backend, dims, threads=2))

    tc = seeds("torch-compile-cpu")
    assert tc["prune→int8-pt2e"] == dict(
        prune_ratio=0.5,
        importance="magnitude",
        global_pruning=False,
        round_to=0,
        iterative_steps=1,
        finetune_epochs=2,
        distill=True,
        quantize="int8-pt2e",
        calib_size=512,
        float_layers="none",
    )
    assert "export" not in tc and "quantize:int8-ort" not in tc  # ONNX: not run by a torch backend
    assert "quantize:dynamic" not in tc  # torchao's dynamic int8 is not in this space
    assert seeds("ort-cpu")["prune→export→int8-ort"]["threads"] == 2  # the export int8-ort makes itself
    assert set(seeds("torch-cpu")) <= {"prune", "quantize:bf16"}  # eager int8 is not offered there
    ratio = search_space("ort-cpu", max_threads=2, has_batchnorm=True)[0]
    assert ratio.admits(0.5) and ratio.admits(0.0) and not ratio.admits(0.52) and not ratio.admits(0.85)
    assert not ratio.admits(True) and not ratio.admits("0.5")


def test_a_worker_on_other_hardware_is_refused(searched_copy):
    ws, _, data_dir, summary = searched_copy
    study = optuna.load_study(study_name=summary["study"], storage=_storage(ws.root))
    study.set_user_attr("machine_fingerprint", dict(fingerprint(physical_cores()), cpu_model="Other CPU"))
    with pytest.raises(UserError, match="measures latency on another machine") as err:
        run_search(ws, SearchSpec(**TINY, trials=4, resume=True), data_dir, log=lambda line: None)
    assert "\n" not in str(err.value)


def test_each_backend_is_offered_only_what_it_runs():
    for backend, space in BACKEND_SPACES.items():
        dims = {d.name: d for d in search_space(backend, max_threads=2, has_batchnorm=True)}
        for method in dims["quantize"].choices:
            for ratio in (0.0, 0.5):
                chain = TrialRecipe(prune_ratio=ratio, finetune_epochs=1, quantize=method).stages(space)
                assert not chain or space.runs(output_format(chain[-1])), (backend, method, ratio)
    assert "bn-scale" not in search_space("ort-cpu", max_threads=2, has_batchnorm=False)[1].choices


def test_layers_left_in_float_are_offered_by_what_the_model_has():
    def choices(backend, **model):
        return {d.name: d for d in search_space(backend, max_threads=2, has_batchnorm=True, **model)}

    plain = choices("ort-cpu", layer_kinds=frozenset(), layers=5)["float_layers"]
    assert plain.choices == ("none", "sensitive:1", "sensitive:2")
    both = choices("torch-compile-cpu", layer_kinds=frozenset({"se", "depthwise"}), layers=2)["float_layers"]
    assert both.choices == ("none", "depthwise", "se", "depthwise,se", "sensitive:1")
    assert both.when(dict(quantize="int8-pt2e")) and not both.when(dict(quantize="bf16"))
    assert not both.when(dict(quantize="none"))
    space = BACKEND_SPACES["ort-cpu"]
    for value, stored in (("none", None), ("sensitive:2", "sensitive:2")):
        recipe = TrialRecipe(quantize="int8-ort", float_layers=value)
        config = recipe.stages(space)[0].config
        assert config.float_layers == (stored or "")
        assert ("float: sensitive:2" in recipe.describe()) == (stored is not None)


def test_screening_makes_one_epoch_over_a_fraction_and_keeps_existing_ids():
    space = BACKEND_SPACES["ort-cpu"]
    recipe = TrialRecipe(prune_ratio=0.5, finetune_epochs=2, distill=True)
    low, full = recipe.stages(space, 0.2)[0].config, recipe.stages(space)[0].config
    assert (low.finetune_epochs, low.finetune_fraction, full.finetune_epochs) == (1, 0.2, 2)
    assert "finetune_fraction" not in full.to_dict()  # a full fine-tune keeps the config (and id) it always had
    assert low.to_dict()["finetune_fraction"] == 0.2


def test_a_recipe_that_aligns_channels_prunes_with_round_to_and_says_so():
    space = BACKEND_SPACES["torch-compile-cpu"]
    dims = {d.name: d for d in search_space("torch-compile-cpu", max_threads=2, has_batchnorm=True)}
    assert dims["round_to"].choices == (0, 8, 16, 32)
    assert dims["round_to"].when(dict(prune_ratio=0.5)) and not dims["round_to"].when(dict(prune_ratio=0.0))
    aligned = TrialRecipe(prune_ratio=0.8, round_to=16, quantize="int8-pt2e")
    assert aligned.stages(space)[0].config.round_to == 16
    assert "channels x16" in aligned.describe()
    assert "channels x" not in TrialRecipe(prune_ratio=0.8).describe()


def test_promotion_keeps_the_best_third_of_rung_0():
    fid = Fidelity(eta=3, slack_pts=5.0)
    point = lambda speedup, top1, drop=0.0: dict(speedup=speedup, val_top1=top1, val_drop_pts=drop)
    assert promotion(point(2.0, 0.8), [], 1.0, fid)[0]  # the first one always goes on
    peers = [point(3.0, 0.9), point(1.0, 0.5)]
    assert not promotion(point(2.0, 0.8), peers, 1.0, fid)[0]  # dominated by the first peer
    assert promotion(point(4.0, 0.95), peers, 1.0, fid)[0]
    ok, why = promotion(point(9.0, 0.1, drop=30.0), peers, 1.0, fid)
    assert not ok and "budget + slack" in why


@pytest.mark.timeout(300)
def test_the_time_limit_stops_the_running_trial_and_the_search_still_sums_up(searched_copy, monkeypatch):
    ws, _, data_dir, _ = searched_copy

    def slow_trial(trial, ctx):  # a promoted trial fine-tuning far past the limit, checking between its steps
        trial.suggest_float("prune_ratio", 0.0, 0.8, step=0.05)
        for _ in range(600):
            time.sleep(0.05)
            ctx.between_steps()
        pytest.fail("the time limit did not stop the trial")

    monkeypatch.setattr(study_module, "run_trial", slow_trial)
    lines = []
    spec = SearchSpec(**TINY, trials=5, study="limit", time_limit_s=0.5)
    started = time.monotonic()
    summary = run_search(ws, spec, data_dir, log=lines.append)
    assert time.monotonic() - started < 25  # stopped at the limit, not after the trial's 30 s
    assert any(line.startswith("time limit reached during trial 0: it stopped") for line in lines), lines
    trials = optuna.load_study(study_name="limit", storage=_storage(ws.root)).trials
    assert trials[0].state == TrialState.FAIL and trials[0].params
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert [(t.system_attrs["fixed_params"], t.user_attrs["retry_of"]) for t in queued] == [(trials[0].params, 0)]
    assert summary["study"] == "limit" and summary_path(ws, "limit").exists()
    assert signal.getitimer(signal.ITIMER_REAL)[0] > 0  # pytest-timeout's own alarm is given back


@pytest.mark.timeout(300)
def test_a_sigterm_held_when_the_time_limit_passes_still_interrupts_the_search(searched_copy, monkeypatch):
    ws, _, data_dir, _ = searched_copy

    def trial_with_a_held_sigterm(trial, ctx):  # as if SIGTERM came during a storage call; no step checks it
        trial.suggest_float("prune_ratio", 0.0, 0.8, step=0.05)
        ctx.between_steps.__self__.pending = True
        time.sleep(30)
        pytest.fail("the time limit did not stop the trial")

    monkeypatch.setattr(study_module, "run_trial", trial_with_a_held_sigterm)
    with pytest.raises(SearchInterrupted, match="stopped by SIGTERM during trial 0"):
        run_search(ws, SearchSpec(**TINY, trials=5, study="held", time_limit_s=0.5), data_dir, log=lambda _: None)
