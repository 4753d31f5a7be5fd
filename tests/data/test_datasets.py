import gzip
import shutil

import pytest
import torch

from deploybench.data import (
    DATASET_NAMES,
    calibration_subset,
    data_digest,
    dataset_info,
    eval_transform,
    fashion_mnist,
    load_splits,
    prepare_fashion_mnist,
    train_transform,
)
from deploybench.errors import UserError

# name: (fixture, channels, image size, classes, train pool, test images)
CASES = {
    "cifar10": ("tiny_cifar10", 3, 32, 10, 40, 20),
    "cifar100": ("tiny_cifar100", 3, 32, 100, 200, 100),
    "fashion-mnist": ("tiny_fashion_mnist", 1, 28, 10, 60, 20),
    "imagefolder": ("tiny_imagefolder", 3, 32, 3, 18, 6),
}


def _load(request, key, **kw):
    path = request.getfixturevalue(CASES[key][0])
    name = f"imagefolder:{path}" if key == "imagefolder" else key
    return name, path, load_splits(name, path, download=False, **kw)


@pytest.mark.parametrize("key", CASES)
def test_every_dataset_loads_through_the_real_loader(request, key):
    _, channels, size, num_classes, pool, n_test = CASES[key]
    name, path, s = _load(request, key, augment=False)
    assert (s.info.in_channels, s.info.image_size, s.info.num_classes) == (channels, size, num_classes)
    assert len(s.info.classes) == num_classes == len(set(s.info.classes))
    assert s.info.classes == tuple(s.val.dataset.classes)  # the files' own class list agrees
    assert len(s.val) == round(pool * 0.1) and len(s.train) + len(s.val) == pool
    assert len(s.test) == n_test and s.skipped_files == 0
    for split in (s.train, s.val, s.test):
        x, y = split[0]
        assert x.shape == (channels, size, size) and x.dtype == torch.float32 and 0 <= y < num_classes
    assert {s.test[i][1] for i in range(len(s.test))} == set(range(num_classes))
    assert dataset_info(name, path) == s.info


def test_val_is_disjoint_deterministic_and_uses_eval_transforms(tiny_cifar10):
    a = load_splits("cifar10", tiny_cifar10, download=False, val_fraction=0.25, seed=1)
    b = load_splits("cifar10", tiny_cifar10, download=False, val_fraction=0.25, seed=1)
    c = load_splits("cifar10", tiny_cifar10, download=False, val_fraction=0.25, seed=2)
    assert a.train.indices == b.train.indices and a.val.indices == b.val.indices
    assert a.val.indices != c.val.indices
    assert not set(a.train.indices) & set(a.val.indices) and len(a.val) == 10
    assert torch.equal(a.val[0][0], a.val[0][0])  # no random augmentation on val
    assert a.train.dataset.data is a.val.dataset.data  # same training files, two transforms


def test_calibration_subset_uses_training_files_with_eval_transforms(tiny_cifar10):
    s = load_splits("cifar10", tiny_cifar10, download=False)
    calib = calibration_subset(s, 8, seed=3)
    assert len(calib) == 8 and set(calib.indices) <= set(s.train.indices)
    assert calib.dataset.train and calib.dataset is not s.test
    assert calib.indices == calibration_subset(s, 8, seed=3).indices
    assert torch.equal(calib[0][0], calib[0][0])
    assert len(calibration_subset(s, 1000)) == len(s.train)


def test_transforms_transfer_and_cutout():
    info = dataset_info("fashion-mnist")
    img = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    assert eval_transform(info, transfer=True)(img).shape == (3, 224, 224)
    x = train_transform(info, augment=False, cutout=8)(img)
    assert (x == 0).sum() >= 64  # an 8x8 square erased to 0 after normalization


def test_unknown_name_lists_choices():
    with pytest.raises(UserError, match="imagefolder:PATH"):
        dataset_info("mnist")
    assert DATASET_NAMES == ("cifar10", "cifar100", "fashion-mnist")


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_cifar_says_where_to_put_it(tmp_path, name, folder):
    with pytest.raises(UserError, match=str(tmp_path / folder)):
        load_splits(name, tmp_path, download=False)


def test_missing_fashion_mnist_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(UserError, match="apt-get install -y dataset-fashion-mnist.*FashionMNIST/raw"):
        load_splits("fashion-mnist", tmp_path / "data", download=False)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_cifar_pickle_is_a_user_error(tiny_cifar10, tmp_path):
    shutil.copytree(tiny_cifar10, tmp_path, dirs_exist_ok=True)
    _truncate(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(UserError, match="corrupt") as e:
        load_splits("cifar10", tmp_path, download=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("file", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"])
def test_truncated_idx_file_is_a_user_error(tiny_fashion_mnist, tmp_path, file):
    shutil.copytree(tiny_fashion_mnist, tmp_path, dirs_exist_ok=True)
    _truncate(tmp_path / "FashionMNIST" / "raw" / file)
    with pytest.raises(UserError, match="corrupt") as e:
        load_splits("fashion-mnist", tmp_path, download=False)
    assert "\n" not in str(e.value)


def test_corrupt_png_is_skipped_and_counted(tiny_imagefolder, tmp_path):
    shutil.copytree(tiny_imagefolder, tmp_path, dirs_exist_ok=True)
    good = tmp_path / "train" / "circle" / "0.png"
    (tmp_path / "train" / "circle" / "broken.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "test" / "square" / "garbage.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 2 corrupt"):
        s = load_splits(f"imagefolder:{tmp_path}", None, download=False)
    assert s.skipped_files == 2 and len(s.train) + len(s.val) == 18 and len(s.test) == 6


def test_single_image_folder_is_split_80_20(tiny_imagefolder):
    s = load_splits(f"imagefolder:{tiny_imagefolder / 'train'}", None, val_fraction=0.2)
    assert len(s.test) == 3 and len(s.train) + len(s.val) == 15
    assert not set(s.test.indices) & (set(s.train.indices) | set(s.val.indices))
    # The held-out test images are the dataset's, not the recipe's: a run with another seed is tested (and its
    # optimized variants and profile rows, which load with the default seed, are measured) on the same images.
    other = load_splits(f"imagefolder:{tiny_imagefolder / 'train'}", None, val_fraction=0.2, seed=1)
    assert other.test.indices == s.test.indices and other.val.indices != s.val.indices


def test_prepare_fashion_mnist_unzips_atomically(tiny_fashion_mnist, tmp_path):
    debian = tmp_path / "debian"
    debian.mkdir()
    for f in fashion_mnist.RAW_FILES:
        with gzip.open(debian / f"{f}.gz", "wb") as out:
            out.write((tiny_fashion_mnist / "FashionMNIST" / "raw" / f).read_bytes())
    assert not prepare_fashion_mnist(tmp_path / "empty", source_dir=tmp_path / "nothing")
    assert prepare_fashion_mnist(tmp_path / "data", source_dir=debian)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(fashion_mnist.RAW_FILES)  # no temp files left
    s = load_splits("fashion-mnist", tmp_path / "data", download=False)
    assert len(s.test) == 20


def test_imagefolder_info_is_cheap_and_sorted(tiny_imagefolder):
    info = dataset_info(f"imagefolder:{tiny_imagefolder}")
    assert info.classes == ("circle", "square", "triangle") and info.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("key", CASES)
def test_data_digest_names_the_files_read_unless_they_are_the_published_ones(request, key, tmp_path, monkeypatch):
    import hashlib

    from deploybench.data import datasets

    name, path, _ = _load(request, key, augment=False)
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    copy_name = f"imagefolder:{copy}" if key == "imagefolder" else name
    digest = data_digest(name, path)
    assert len(digest) == 64 and data_digest(copy_name, copy) == digest  # where the files lie does not matter
    files = datasets._data_files(copy_name, copy)
    edited = files[-1][1]
    edited.write_bytes(edited.read_bytes()[:-1] + bytes([edited.read_bytes()[-1] ^ 1]))
    assert data_digest(copy_name, copy) not in (None, digest)
    if key == "imagefolder":  # no published files: always a digest
        return
    # The published files, known by their md5 pins, give no digest: ids made from them do not depend on one.
    real = datasets._data_files
    pins = {rel: hashlib.md5(p.read_bytes()).hexdigest() for rel, p, _ in real(name, path)}
    monkeypatch.setattr(datasets, "_data_files", lambda n, d: [(rel, p, pins[rel]) for rel, p, _ in real(n, d)])
    assert data_digest(name, path) is None
    assert data_digest(copy_name, copy) is not None  # the edited copy is not the published data


def test_the_published_fashion_mnist_has_no_digest(tmp_path):
    """The RAW_MD5 pins against the real files (Debian's dataset-fashion-mnist, unpacked as `make demo` does):
    what keeps a digest out of the ids of runs on the published data."""
    if not all((fashion_mnist.DEBIAN_DIR / f"{f}.gz").is_file() for f in fashion_mnist.RAW_FILES):
        pytest.skip(f"the real Fashion-MNIST is not installed in {fashion_mnist.DEBIAN_DIR}")
    assert data_digest("fashion-mnist", tmp_path) is None  # unpacked first, as `load_splits` would
    assert prepare_fashion_mnist(tmp_path)  # already there


def test_image_folder_digest_follows_linked_class_folders(tiny_imagefolder, tmp_path):
    import os

    from deploybench.data import canonical_dataset, datasets

    pool = tmp_path / "pool"
    shutil.copytree(tiny_imagefolder / "train", pool)
    shutil.move(pool / "circle", tmp_path / "circle")
    (pool / "circle").symlink_to(tmp_path / "circle", target_is_directory=True)  # ImageFolder walks into it
    name = f"imagefolder:{pool}"
    assert len(datasets._data_files(name, None)) == 18  # 6 of them through the link
    before = data_digest(name, None)
    image = next((tmp_path / "circle").iterdir())
    image.write_bytes(image.read_bytes() + b"\0")
    assert data_digest(name, None) not in (None, before)
    assert canonical_dataset("imagefolder:~/pets") == "imagefolder:" + os.path.expanduser("~/pets")
    assert canonical_dataset("imagefolder:pets") == "imagefolder:" + os.path.abspath("pets")
    assert canonical_dataset("cifar10") == "cifar10"


def test_a_relative_image_folder_names_its_files_from_its_root(tiny_imagefolder, tmp_path, monkeypatch):
    from deploybench.data import datasets

    monkeypatch.chdir(tiny_imagefolder)
    relative = [rel for rel, _, _ in datasets._data_files("imagefolder:.", None)]
    absolute = [rel for rel, _, _ in datasets._data_files(f"imagefolder:{tiny_imagefolder}", None)]
    assert relative == absolute and relative[0].startswith(("train/", "test/"))
