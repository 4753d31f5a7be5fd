"""User images into model inputs: read with PIL (refusing what is not an image), brought to the dataset's channels
and size, then the dataset's own evaluation transform."""

from __future__ import annotations

import os
import warnings
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from deploybench.data import dataset_info, eval_transform
from deploybench.errors import UserError

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000  # far above any photo; refuses decompression bombs before they are decoded


@lru_cache(maxsize=16)
def _info(dataset: str, data_dir: str):
    return dataset_info(dataset, data_dir)


def read_image(path: str) -> Image.Image:
    """The image at `path` (a file Gradio saved from an upload), fully decoded. Raises UserError with a short
    message for a missing, too large, non-image or corrupt file."""
    try:
        size = os.path.getsize(path)
    except OSError:
        raise UserError("the uploaded file could not be read; upload it again") from None
    if size > MAX_FILE_BYTES:
        raise UserError(f"the file is {size / 2**20:.1f} MB; images up to {MAX_FILE_BYTES // 2**20} MB are accepted")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.width * img.height > MAX_PIXELS:
                raise UserError(f"the image is {img.width}x{img.height} pixels; at most {MAX_PIXELS:,} are accepted")
            img.load()
    except UserError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError("the file is not an image (PNG, JPEG, BMP, GIF, WebP, TIFF ...) or is too large") from None
    except (OSError, ValueError, SyntaxError):  # truncated or damaged data
        raise UserError("the image is corrupt: it could not be decoded") from None
    return img


def to_input(img: Image.Image, dataset: str, data_dir, transfer: bool = False) -> torch.Tensor:
    """One (C, H, W) float tensor for a model of `dataset`: the dataset's channels (grey or RGB, transparency over
    white), its size (image folders are resized by their own transform), then its evaluation transform."""
    info = _info(dataset, str(data_dir))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    img = img.convert("L" if info.in_channels == 1 else "RGB")
    if not info.name.startswith("imagefolder:") and img.size != (info.image_size, info.image_size):
        img = img.resize((info.image_size, info.image_size), Image.Resampling.BILINEAR)
    return eval_transform(info, transfer=transfer)(img)


def to_picture(x: torch.Tensor, dataset: str, data_dir, transfer: bool = False) -> np.ndarray:
    """A transformed input back as uint8 pixels (H, W) or (H, W, 3), to show what the models see."""
    from deploybench.data.presets import IMAGENET_MEAN, IMAGENET_STD

    info = _info(dataset, str(data_dir))
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if transfer else (info.mean, info.std)
    c = x.shape[0]
    mean_t = torch.tensor(mean[:c] if len(mean) >= c else mean * c).view(-1, 1, 1)
    std_t = torch.tensor(std[:c] if len(std) >= c else std * c).view(-1, 1, 1)
    pixels = (x * std_t + mean_t).clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels[0].numpy() if c == 1 else pixels.permute(1, 2, 0).numpy()
