"""Tiny datasets written in the real on-disk formats, so the real torchvision loaders read them."""

import pickle

import numpy as np
import pytest
import torch

from deploybench.data import dataset_info
from ondisk import images as _images
from ondisk import write_fashion_mnist, write_imagefolder


def _pickle(path, obj):
    # The official files are Python 2 pickles; torchvision reads them with encoding="latin1", which turns
    # their keys into `str`. A protocol-2 pickle with str keys reads back identically.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run where CUDA is and skip, saying why, everywhere else (CI has no GPU)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory):
    """data_dir with cifar-10-batches-py/: 5 train batches of 8 images, 20 test images, all 10 classes."""
    root = tmp_path_factory.mktemp("cifar10")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for i in range(1, 6):
        labels = [(8 * (i - 1) + j) % 10 for j in range(8)]
        data = _images(rng, labels, (3072,), 10)
        _pickle(
            folder / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": labels,
                "data": data,
                "filenames": [f"{i}_{j}.png" for j in range(8)],
            },
        )
    labels = [j % 10 for j in range(20)]
    _pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": labels,
            "data": _images(rng, labels, (3072,), 10),
            "filenames": [],
        },
    )
    _pickle(
        folder / "batches.meta",
        {"label_names": list(dataset_info("cifar10").classes), "num_cases_per_batch": 8, "num_vis": 3072},
    )
    return root


@pytest.fixture(scope="session")
def tiny_cifar100(tmp_path_factory):
    """data_dir with cifar-100-python/: 200 train images (2 per class), 100 test images (1 per class)."""
    root = tmp_path_factory.mktemp("cifar100")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for split, n in (("train", 200), ("test", 100)):
        fine = [j % 100 for j in range(n)]
        _pickle(
            folder / split,
            {
                "batch_label": split,
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": _images(rng, fine, (3072,), 100),
                "filenames": [],
            },
        )
    _pickle(
        folder / "meta",
        {
            "fine_label_names": list(dataset_info("cifar100").classes),
            "coarse_label_names": [f"coarse_{i}" for i in range(20)],
        },
    )
    return root


@pytest.fixture(scope="session")
def tiny_fashion_mnist(tmp_path_factory):
    """data_dir with FashionMNIST/raw/: the four uncompressed IDX files, 60 train / 20 test images, 28x28."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory):
    """PATH/{train,test}/<class>/*.png, 3 classes, 6 train / 2 test PNGs each, in odd sizes (resized to 32)."""
    return write_imagefolder(tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture(scope="session")
def _trained_lenet_workspace(tmp_path_factory, tiny_fashion_mnist):
    """A workspace holding lenet trained for 1 epoch on tiny Fashion-MNIST (trained once per session)."""
    from deploybench.store import Workspace
    from deploybench.train.recipes import default_recipe
    from deploybench.train.run import train_model

    root = tmp_path_factory.mktemp("trained") / "ws"
    ws = Workspace(root)
    recipe = default_recipe("lenet", epochs=1, batch_size=16)
    variant, _ = train_model(ws, "lenet", "fashion-mnist", recipe, data_dir=tiny_fashion_mnist, log=lambda *_: None)
    return root, variant.id


@pytest.fixture
def trained_workspace(_trained_lenet_workspace, tmp_path, tiny_fashion_mnist):
    """(workspace, trained lenet variant, data_dir): a private copy per test, so tests cannot disturb each other."""
    import shutil

    from deploybench.store import Workspace

    src, vid = _trained_lenet_workspace
    dst = tmp_path / "ws"
    shutil.copytree(src, dst)
    ws = Workspace(dst)
    return ws, ws.get_variant(vid), tiny_fashion_mnist


def make_onnx_variant(ws, parent, *, dynamic_batch=True, stage="export"):
    """Export `parent` to ONNX (model.onnx) as a child variant of format "onnx"."""
    from deploybench.artifacts import formats
    from deploybench.optimize.base import model_keys
    from deploybench.profile.static import input_shape, root_config

    module = formats.load_module(parent)
    shape = input_shape(root_config(ws, parent))

    def write(d):
        kwargs = dict(dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}) if dynamic_batch else {}
        torch.onnx.export(
            module,
            (torch.zeros(2, *shape),),
            str(d / "model.onnx"),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            **kwargs,
        )

    variant, _ = ws.create_variant(
        model=parent.model,
        dataset=parent.dataset,
        stage=stage,
        config=dict(model_keys(parent), opset=17, dynamic=dynamic_batch),
        parent=parent,
        fmt="onnx",
        write=write,
    )
    return variant


@pytest.fixture
def onnx_workspace(trained_workspace):
    """(ws, trained lenet, its ONNX export, data_dir)."""
    ws, trained, data_dir = trained_workspace
    return ws, trained, make_onnx_variant(ws, trained), data_dir


@pytest.fixture
def make_onnx():
    return make_onnx_variant


@pytest.fixture
def stand_in_runtimes(monkeypatch):
    """Replaces `profile.crosscheck.loaded_backend` with runtimes that run nothing; returns (loads, closed, failing):
    the keys (variant id, backend, batch size, threads) loaded and closed, in order, and a set of keys whose close
    raises RuntimeError("close failed")."""
    from deploybench.profile import crosscheck

    loads, closed, failing = [], [], set()

    class Runtime:
        def __init__(self, key):
            self.key = key

        def prepare(self, x):
            return x

        def run(self, x):
            return x

        def synchronize(self):
            pass

        def run_facts(self):
            return {}

        def close(self):
            closed.append(self.key)
            if self.key in failing:
                raise RuntimeError("close failed")

    def load(backend, variant, batch_size, threads):
        loads.append((variant.id, backend, batch_size, threads))
        return Runtime(loads[-1])

    monkeypatch.setattr(crosscheck, "loaded_backend", load)
    return loads, closed, failing
