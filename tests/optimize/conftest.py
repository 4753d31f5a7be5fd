"""Helpers for the optimize tests: reloading variants in a fresh process, random-weight roots for any arch."""

import json
import subprocess
import sys

import pytest
import torch

# Runs in a fresh interpreter: loads each variant on the backend that evaluates it and saves its test-split logits.
_RELOAD = """
import json, sys, numpy as np
from deploybench.store import Workspace
from deploybench.optimize.base import predict, predictions_digest, stage_data
ws_root, data_dir, out, ids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
ws = Workspace(ws_root, create=False)
digests = {}
for vid in ids:
    v = ws.get_variant(vid)
    logits = predict(v, stage_data(ws, v, data_dir))[1]
    np.save(f"{out}/{vid}.npy", logits.numpy())
    digests[vid] = predictions_digest(logits)
print(json.dumps(digests))
"""


@pytest.fixture
def reload_fresh(tmp_path):
    """reload_fresh(ws, variants, data_dir): assert each reloads in a new process with the recorded predictions
    and the same logits as an in-process reload."""

    def check(ws, variants, data_dir):
        from deploybench.optimize.base import predict, stage_data

        out = tmp_path / "logits"
        out.mkdir(exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-c", _RELOAD, str(ws.root), str(data_dir), str(out), *[v.id for v in variants]],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        digests = json.loads(proc.stdout.strip().splitlines()[-1])
        for v in variants:
            assert digests[v.id] == v.metrics["predictions_sha256"], v.stages
            here = predict(v, stage_data(ws, v, data_dir))[1]
            fresh = torch.from_numpy(__import__("numpy").load(out / f"{v.id}.npy"))
            torch.testing.assert_close(fresh, here, rtol=0, atol=1e-5)

    return check


@pytest.fixture
def random_root():
    """random_root(ws, arch, data_dir): see `_random_root`."""
    return _random_root


def _random_root(ws, arch, data_dir, dataset="fashion-mnist", **recipe):
    """A 'train' variant of `arch` with seeded random weights (no training): a fast root for the chains. `recipe`:
    options of its recorded training recipe other than the default's (batch size 16)."""
    from deploybench.data import dataset_info
    from deploybench.models import count_params
    from deploybench.models.identity import build_model, model_config

    info = dataset_info(dataset, data_dir)
    recipe = dict(
        __import__("deploybench.train.recipes", fromlist=["default_recipe"]).default_recipe(arch).to_dict(),
        batch_size=16,
        **recipe,
    )
    config = dict(
        model_config(arch, info),
        dataset=dataset,
        recipe=recipe,
    )
    torch.manual_seed(0)
    model = build_model(config).eval()

    def write(d):
        from torch.utils.data import DataLoader

        from deploybench.optimize.base import _stage_data
        from deploybench.train.engine import evaluate

        torch.save(model.state_dict(), d / "model.pt")
        splits = _stage_data(dataset, str(data_dir), False, recipe["seed"]).splits  # the root's split
        result = evaluate(model, DataLoader(splits.test, batch_size=256), torch.device("cpu"), info.num_classes)
        return dict(accuracy_top1=result.top1, params=count_params(model))

    return ws.create_variant(
        model=arch, dataset=dataset, stage="train", config=config, parent=None, fmt="torch-state", write=write
    )[0]
