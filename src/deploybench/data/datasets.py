"""Datasets: CIFAR-10/100, Fashion-MNIST and `imagefolder:PATH`, split into train / val / test.

The validation split is carved (seeded) from the training files and uses the eval transforms; the test
split is only ever used for the final accuracy, never for model selection.
"""

import copy
import functools
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.vision import StandardTransform

from deploybench.data import fashion_mnist
from deploybench.data.presets import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from deploybench.errors import UserError, unknown_choice

DATASET_NAMES = ("cifar10", "cifar100", "fashion-mnist")
IMAGEFOLDER = "imagefolder:"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew
skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    info: DatasetInfo
    skipped_files: int = 0  # corrupt images left out of an image folder


# torchvision pins each CIFAR file to the md5 of the official archive, so a re-packed but valid copy
# (or a fixture) is refused as "corrupted". These keep torchvision's reader and drop only the per-file
# pins; a download is still checked against the archive's md5, and unreadable files still fail.
class _CIFAR10(tvd.CIFAR10):
    train_list = [[f, None] for f, _ in tvd.CIFAR10.train_list]
    test_list = [[f, None] for f, _ in tvd.CIFAR10.test_list]
    meta = {**tvd.CIFAR10.meta, "md5": None}


class _CIFAR100(tvd.CIFAR100):
    train_list = [[f, None] for f, _ in tvd.CIFAR100.train_list]
    test_list = [[f, None] for f, _ in tvd.CIFAR100.test_list]
    meta = {**tvd.CIFAR100.meta, "md5": None}


_CIFAR = {"cifar10": _CIFAR10, "cifar100": _CIFAR100}


def canonical_dataset(name: str) -> str:
    """`name` with an `imagefolder:` PATH made absolute (after `~`), so that one folder is one dataset, with one
    id and one artifact folder, from whatever directory a command runs in."""
    if name.startswith(IMAGEFOLDER) and len(name) > len(IMAGEFOLDER):
        return IMAGEFOLDER + os.path.abspath(os.path.expanduser(name[len(IMAGEFOLDER) :]))
    return name


def _check_name(name: str) -> None:
    if name not in DATASET_NAMES and not (name.startswith(IMAGEFOLDER) and len(name) > len(IMAGEFOLDER)):
        raise unknown_choice("dataset", name, [*DATASET_NAMES, "imagefolder:PATH"])


def _folder_roots(name: str) -> tuple[Path, Path | None]:
    """(train root, test root or None when the folder is one pool split 80/20)."""
    path = Path(name[len(IMAGEFOLDER) :]).expanduser()
    if (path / "train").is_dir() and (path / "test").is_dir():
        return path / "train", path / "test"
    if not path.is_dir():
        raise UserError(f"image folder {path} not found (expected {path}/train/<class>/ and {path}/test/<class>/)")
    return path, None


def dataset_info(name: str, data_dir=None) -> DatasetInfo:
    """Shape, normalization and class names of a dataset, without reading its images."""
    _check_name(name)
    if name == "cifar10":
        return DatasetInfo(name, 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), CIFAR10_CLASSES)
    if name == "cifar100":
        return DatasetInfo(name, 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), CIFAR100_CLASSES)
    if name == "fashion-mnist":
        return DatasetInfo(name, 10, 1, 28, (0.2860,), (0.3530,), tuple(tvd.FashionMNIST.classes))
    root, _ = _folder_roots(name)
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    if not classes:
        raise UserError(f"image folder {root} has no class subfolders (expected {root}/<class>/*.png)")
    _check_two_classes(root, classes)
    return DatasetInfo(name, len(classes), 3, 32, IMAGENET_MEAN, IMAGENET_STD, classes)


def _check_two_classes(root: Path, classes) -> None:
    """Refuse an image folder of fewer than two classes: a one-class classifier learns nothing and scores 100%."""
    if len(classes) < 2:
        raise UserError(
            f"image folder {root} has {len(classes)} class ({', '.join(classes)}); a classifier needs at "
            f"least two class subfolders ({root}/<class>/*.png)"
        )


def _one_line(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _read(make, what: str):
    """Run a torchvision loader; any failure while reading files becomes a one-line UserError."""
    try:
        ds = make()
    except UserError:
        raise
    except Exception as e:  # pickle, numpy, torch and PIL raise many kinds on truncated files
        raise UserError(f"{what} is corrupt or unreadable ({_one_line(e)}); delete it and fetch it again") from e
    if len(ds.data) != len(ds.targets):
        raise UserError(f"{what} is corrupt: {len(ds.data)} images but {len(ds.targets)} labels")
    return ds


def _load_cifar(name, data_dir, download):
    cls = _CIFAR[name]
    folder = Path(data_dir) / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]

    def missing():
        return [f for f in files if not (folder / f).is_file()]

    hint = f"put the extracted {cls.base_folder} folder at {folder} (from {cls.url})"
    if missing() and download:
        try:
            cls(root=data_dir, train=True, download=True)
        except Exception as e:  # no network, proxy, bad archive: the user can place the files by hand
            raise UserError(f"{name} download failed ({_one_line(e)}); {hint}") from e
    if missing():
        raise UserError(f"{name} not found: missing {', '.join(missing())}; {hint}")
    return (_read(lambda t=t: cls(root=data_dir, train=t), f"{name} data in {folder}") for t in (True, False))


def _load_fashion_mnist(data_dir, download):
    raw = fashion_mnist.raw_dir(data_dir)
    hint = (
        f"run `apt-get install -y dataset-fashion-mnist`, or put {', '.join(fashion_mnist.RAW_FILES)} "
        f"(gunzipped) in {raw}"
    )
    if not fashion_mnist.prepare_fashion_mnist(data_dir) and download:
        try:
            tvd.FashionMNIST(root=data_dir, train=True, download=True)
        except Exception as e:
            raise UserError(f"fashion-mnist download failed ({_one_line(e)}); {hint}") from e
    if not all((raw / f).is_file() for f in fashion_mnist.RAW_FILES):
        raise UserError(f"fashion-mnist not found in {raw}; {hint}")
    return (
        _read(lambda t=t: tvd.FashionMNIST(root=data_dir, train=t), f"fashion-mnist data in {raw}")
        for t in (True, False)
    )


def _image_folder(root: Path, skipped: list) -> tvd.ImageFolder:
    def is_valid_file(path: str) -> bool:
        if not path.lower().endswith(IMG_EXTENSIONS):
            return False
        try:
            with Image.open(path) as im:
                im.verify()
            return True
        except Exception:  # PIL raises OSError, SyntaxError, ValueError... on damaged images
            skipped.append(path)
            return False

    try:
        ds = tvd.ImageFolder(str(root), is_valid_file=is_valid_file, allow_empty=True)
    except (OSError, RuntimeError) as e:
        raise UserError(f"cannot read image folder {root}: {_one_line(e)}") from e
    if not ds.samples:
        raise UserError(f"image folder {root} has no readable images (expected {root}/<class>/*.png)")
    _check_two_classes(root, sorted({ds.classes[label] for _, label in ds.samples}))  # classes that have images
    return ds


# The 80/20 split of a single-folder dataset is part of the dataset, not of a recipe: every run, optimized
# variant and profile row of it is tested on the same held-out images, whatever seed trained it.
POOL_TEST_SEED = 0


def _load_imagefolder(name):
    train_root, test_root = _folder_roots(name)
    skipped: list[str] = []
    train = _image_folder(train_root, skipped)
    if test_root is None:
        # One pool: a seeded 80/20 split, the 20% held out as the test split.
        order = np.random.default_rng(POOL_TEST_SEED).permutation(len(train))
        n_test = max(1, len(train) // 5)
        return train, train, skipped, sorted(order[n_test:].tolist()), sorted(order[:n_test].tolist())
    test = _image_folder(test_root, skipped)
    if test.classes != train.classes:
        raise UserError(f"class folders differ: {train_root} has {train.classes}, {test_root} has {test.classes}")
    return train, test, skipped, list(range(len(train))), None


def _data_files(name: str, data_dir) -> list[tuple[str, Path, str | None]]:
    """(path relative to the dataset's folder, path, md5 of the published file or None) of every file
    `load_splits` reads for `name`, sorted."""
    if name in _CIFAR:
        real = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
        folder = Path(data_dir) / real.base_folder
        pins = dict(real.train_list + real.test_list) | {real.meta["filename"]: real.meta["md5"]}
        return [(f, folder / f, md5) for f, md5 in sorted(pins.items())]
    if name == "fashion-mnist":
        fashion_mnist.prepare_fashion_mnist(data_dir)  # as `load_splits` does: the Debian files, unpacked
        raw = fashion_mnist.raw_dir(data_dir)
        return [(f, raw / f, fashion_mnist.RAW_MD5[f]) for f in sorted(fashion_mnist.RAW_FILES)]
    name = canonical_dataset(name)  # absolute: the roots below then all start with `base`
    base = os.path.join(name[len(IMAGEFOLDER) :], "")  # with its trailing separator
    files = sorted(
        os.path.join(top, f)
        for root in _folder_roots(name)
        if root is not None
        for top, _, names in os.walk(root, followlinks=True)  # as ImageFolder walks: into linked folders
        for f in names
        if f.lower().endswith(IMG_EXTENSIONS)
    )
    # Strings, all under `base`: pathlib's relative_to and resolve cost several times as much per path, and
    # every digest lists every image.
    return [(p[len(base) :], Path(p), None) for p in files]


def data_digest(name: str, data_dir) -> str | None:
    """None when the files `load_splits` reads for `name` are the published ones (by their md5 pins); else the
    sha256 of their relative paths and bytes. Whatever is trained, optimized or measured on other files (a
    fixture, an edited copy, an image folder, which has no published files) is then a variant of its own: the
    digest enters its config and id. Cached per file list, sizes, modification and change times, devices and
    inodes."""
    stamp = []
    for rel, p, md5 in _data_files(name, data_dir):
        try:
            st = p.stat()
        except OSError as e:
            raise UserError(f"{name} data not found in --data-dir: {e.filename}: {e.strerror}") from None
        stamp.append((rel, str(p), md5, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino))
    return _digest(tuple(stamp))


def data_keys(name: str, data_dir) -> dict:
    """Config keys of the data a variant is made or measured with: `data_sha256` when the files are not the
    published ones (`data_digest`), else none: a config without data keys means the published data, so ids
    made from it do not depend on the digest."""
    digest = data_digest(name, data_dir)
    return {} if digest is None else dict(data_sha256=digest)


@functools.lru_cache(maxsize=16)
def _digest(stamp: tuple) -> str | None:
    total, published = hashlib.sha256(), bool(stamp)
    for rel, path, md5, *_ in stamp:
        own = hashlib.md5(usedforsecurity=False)
        total.update(rel.encode() + b"\0")
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    own.update(chunk)
                    total.update(chunk)
        except OSError:  # an image the loader skips as unreadable: it counts as what it is, unreadable
            total.update(b"\0unreadable")
            published = False
        total.update(b"\0")
        published = published and md5 is not None and own.hexdigest() == md5
    return None if published else total.hexdigest()


def _with_transform(ds, transform):
    """A second dataset object over the same files (shares the arrays/file list) with its own transform."""
    ds = copy.copy(ds)
    ds.transform, ds.transforms = transform, StandardTransform(transform, ds.target_transform)
    return ds


def load_splits(
    name: str, data_dir, *, val_fraction=0.1, seed=0, augment=True, cutout=0, transfer=False, download=True
) -> Splits:
    """Load a dataset through torchvision's real loaders and split it into train / val / test.

    Args: name: one of DATASET_NAMES or `imagefolder:PATH`; data_dir: where CIFAR / Fashion-MNIST live
    (`<data_dir>/cifar-10-batches-py`, `<data_dir>/cifar-100-python`, `<data_dir>/FashionMNIST/raw`);
    val_fraction: share of the training files held out (seeded) as validation, with eval transforms;
    augment / cutout / transfer: see `presets.train_transform`; download: try torchvision's download when
    files are missing (Fashion-MNIST is first unpacked from the Debian package if installed).
    `imagefolder:PATH` reads `PATH/train/<class>/*` and `PATH/test/<class>/*`, or, without those two
    folders, `PATH/<class>/*` split 80/20 into train pool / test (always with `POOL_TEST_SEED`). Images are
    resized to 32x32 RGB.
    Corrupt images are skipped (each file is opened and verified with PIL at scan time), counted in
    `Splits.skipped_files` and reported with one warning, so one bad file does not stop a run.
    Returns: Splits. Raises UserError on unknown names, missing or corrupt files.
    """
    info = dataset_info(name, data_dir)
    skipped: list[str] = []
    pool_idx, test_idx = None, None
    if name in _CIFAR:
        train_ds, test_ds = _load_cifar(name, data_dir, download)
    elif name == "fashion-mnist":
        train_ds, test_ds = _load_fashion_mnist(data_dir, download)
    else:
        train_ds, test_ds, skipped, pool_idx, test_idx = _load_imagefolder(name)
    if skipped:
        warnings.warn(f"{name}: skipped {len(skipped)} corrupt image(s), e.g. {skipped[0]}", stacklevel=2)
    pool_idx = list(range(len(train_ds))) if pool_idx is None else pool_idx
    order = np.random.default_rng(seed).permutation(len(pool_idx))
    n_val = int(round(len(pool_idx) * val_fraction))
    if not 0 <= n_val < len(pool_idx):
        raise UserError(f"val_fraction={val_fraction} leaves no training images out of {len(pool_idx)}")
    val_idx = sorted(pool_idx[i] for i in order[:n_val])
    train_idx = sorted(pool_idx[i] for i in order[n_val:])
    evaluate = eval_transform(info, transfer=transfer)
    train = Subset(
        _with_transform(train_ds, train_transform(info, augment=augment, cutout=cutout, transfer=transfer)), train_idx
    )
    val = Subset(_with_transform(train_ds, evaluate), val_idx)
    test_ds = _with_transform(test_ds, evaluate)
    test = test_ds if test_idx is None else Subset(test_ds, test_idx)
    return Splits(train, val, test, info, skipped_files=len(skipped))


def calibration_subset(splits: Splits, n: int, seed=0) -> Dataset:
    """`n` images (fewer if the train split is smaller) drawn, seeded, from the train split's files, with
    the eval transforms: what quantization calibrates on. Never test images, never validation images."""
    indices = splits.train.indices
    pick = np.random.default_rng(seed).choice(len(indices), size=min(n, len(indices)), replace=False)
    return Subset(splits.val.dataset, sorted(indices[i] for i in pick))
