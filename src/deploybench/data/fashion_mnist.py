"""Fashion-MNIST from the Debian package `dataset-fashion-mnist`, unpacked where torchvision looks."""

import gzip
import os
import shutil
import tempfile
from pathlib import Path

from deploybench.errors import UserError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# md5 of the four IDX files as unpacked from Debian's dataset-fashion-mnist, by which `data_digest` knows the
# published data (torchvision pins only its .gz archives, and Debian's archives are compressed differently).
RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def raw_dir(data_dir) -> Path:
    """The folder where torchvision's `FashionMNIST(root=data_dir)` reads the four IDX files."""
    return Path(data_dir) / "FashionMNIST" / "raw"


def prepare_fashion_mnist(data_dir, source_dir=None) -> bool:
    """Gunzip the missing IDX files from `source_dir` (default DEBIAN_DIR) into `raw_dir(data_dir)`.

    Each file is written to a temporary file in the same folder and renamed into place, so an interrupted
    run never leaves a truncated file behind. Returns True when all four raw files are in place afterwards.
    """
    raw, source = raw_dir(data_dir), Path(DEBIAN_DIR if source_dir is None else source_dir)
    for name in RAW_FILES:
        src = source / f"{name}.gz"
        if (raw / name).exists() or not src.is_file():
            continue
        raw.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
        try:
            with gzip.open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            os.replace(tmp, raw / name)
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
            raise UserError(f"could not unpack {src}: {e}") from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return all((raw / name).is_file() for name in RAW_FILES)
