"""The bench loader's images: JPEGs cut from scikit-learn's sample photographs (real photographs, not synthetic
pictures), as an ImageFolder and a .beton of the same images, made once per work folder and reused.

The two photographs are smooth (a 375x500 crop is a ~56 KB JPEG at quality 90, ImageNet's average is ~110 KB):
`texture` adds noise of that standard deviation (levels) to each crop, for JPEGs as costly to decode as ImageNet's."""
from __future__ import annotations

import os
import shutil
from typing import Dict

import numpy as np

PHOTO_SIZE = (350, 467)  # height, width: ~350 px photos, the shape the CPU targets were measured on
MAX_PHOTO_SIZE = (427, 640)  # scikit-learn's sample photographs


def _save_photos(folder: str, start: int, stop: int, size, classes: int, quality: int, seed: int,
                 texture: float = 0.0) -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427x640 RGB photographs
    h, w = size
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])  # image i is the same whichever process makes it
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - h + 1)
        left = rng.integers(0, photo.shape[1] - w + 1)
        crop = photo[top:top + h, left:left + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if texture:
            crop = (crop + rng.normal(0, texture, crop.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(np.ascontiguousarray(crop)).save(
            os.path.join(folder, f"class_{i % classes}", f"{i:06d}.jpg"), quality=quality)


def make_photos(folder: str, n: int, *, size=PHOTO_SIZE, classes: int = 10, quality: int = 90,
                seed: int = 0, texture: float = 0.0) -> None:
    """`n` JPEGs of `size` (h, w) in folder/class_k/: random crops of load_sample_images' photos, half of
    them mirrored; made by one process per core (12,800 of them take minutes in one)."""
    from concurrent.futures import ProcessPoolExecutor

    for k in range(classes):
        os.makedirs(os.path.join(folder, f"class_{k}"), exist_ok=True)
    procs = min(len(os.sched_getaffinity(0)), max(1, n // 500))
    bounds = np.linspace(0, n, procs + 1).astype(int)
    with ProcessPoolExecutor(procs) as pool:
        jobs = [pool.submit(_save_photos, folder, int(a), int(b), size, classes, quality, seed, texture)
                for a, b in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()


def prepare_data(workdir: str, n: int, size=PHOTO_SIZE, write_mode: str = "jpg", texture: float = 0.0) \
        -> Dict[str, str]:
    """The ImageFolder and the .beton of the same photos, each made unless already there (a marker file
    written last says a folder is complete; the writer itself writes the .beton atomically)."""
    from resnext_dist.data.sources import ImageFolderSource
    from resnext_dist.data.write import write_beton

    h, w = size
    grain = f"_t{texture:g}" if texture else ""  # other pixels, other files
    folder = os.path.join(workdir, f"photos_{h}x{w}{grain}")
    beton = os.path.join(workdir, f"photos_{n}_{h}x{w}{grain}_{write_mode}.beton")
    marker = folder + f".{n}.done"
    if not os.path.exists(marker):
        shutil.rmtree(folder, ignore_errors=True)
        if os.path.exists(beton):
            os.remove(beton)  # made from the images just removed
        print(f"making {n} JPEGs of {h}x{w} in {folder} ...", flush=True)
        make_photos(folder, n, size=size, texture=texture)
        open(marker, "w").close()
    if not os.path.exists(beton):
        write_beton(ImageFolderSource(folder), beton, write_mode=write_mode, jpeg_quality=90)
    return {"ffcv": beton, "torchvision": folder, "synthetic": ""}
