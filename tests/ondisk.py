"""Tiny datasets written in the real on-disk formats (shared by the tests and the benchmarks)."""

import struct

import numpy as np


def images(rng, labels, shape, num_classes):
    """uint8 images whose brightness grows with the label (learnable), plus a little noise."""
    base = (30 + 190 * np.asarray(labels) / max(1, num_classes - 1)).astype(np.int16)
    noise = rng.randint(-20, 21, size=(len(labels), *shape))
    return np.clip(base.reshape(-1, *[1] * len(shape)) + noise, 0, 255).astype(np.uint8)


def _idx(path, array, magic):
    # IDX: big-endian magic (2051 images, 2049 labels), big-endian dims, then raw uint8 data.
    with open(path, "wb") as f:
        f.write(struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape) + array.tobytes())


def write_fashion_mnist(root, n_train: int = 60, n_test: int = 20):
    """root/FashionMNIST/raw/: the four uncompressed IDX files, 28x28, labels cycling over the 10 classes."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        _idx(raw / f"{prefix}-images-idx3-ubyte", images(rng, labels, (28, 28), 10), 2051)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 2049)
    return root


def write_imagefolder(root, n_train: int = 6, n_test: int = 2):
    """root/{train,test}/<class>/*.png: 3 classes, `n_train` / `n_test` PNGs each, in odd sizes (j-th: 36+j x 40)."""
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, cls in enumerate(("circle", "square", "triangle")):
            (root / split / cls).mkdir(parents=True)
            for j in range(n):
                pixels = images(rng, [label], (36 + j, 40, 3), 3)[0]
                Image.fromarray(pixels).save(root / split / cls / f"{j}.png")
    return root
