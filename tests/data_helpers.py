"""Shared by the data tests: tiny datasets on disk, config builders, and a 2-rank loader probe.

    python -m torch.distributed.run --nproc_per_node=2 ... -m tests.data_helpers CFG_JSON OUT_DIR

runs `probe` on each rank: it builds the loaders with the given DataConfig fields (and `global_batch`, images
per step over all ranks, 0 = batch_size x ranks), records the labels of every training batch of epochs 0 and 1,
of epoch 1 started SKIP steps in, and of the validation share, all-reduces the validation count, and writes
OUT_DIR/rank<R>.json. With `start` (a global position), only epoch 1 from `start` is read (`epoch1_skip`).
"""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
from PIL import Image

from resnext_dist.config import DataConfig

SKIP = 3


def data_cfg(**fields) -> DataConfig:
    base = dict(batch_size=8, num_workers=1, train_res=16, val_res=16, val_crop_ratio=1.0)
    base.update(fields)
    return DataConfig(**base)


def make_image_folder(root, classes=("a", "b", "c"), per_class=4, size=(24, 20), ext="png", seed=0):
    """root/<class>/<i>.<ext> with random images of size (w, h); returns {path: (pixels, label)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for label, cls in enumerate(classes):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            path = os.path.join(root, cls, f"{i:03d}.{ext}")
            Image.fromarray(pixels).save(path)
            out[path] = (pixels, label)
    return out


def make_cifar_folder(root, kind="cifar10", per_batch=6, seed=0):
    """A fake CIFAR python folder with the real layout and pickle format; returns (train, val) labels."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    n_classes = 10 if kind == "cifar10" else 100
    label_key = "labels" if kind == "cifar10" else "fine_labels"
    files = ([f"data_batch_{k}" for k in range(1, 6)], ["test_batch"]) if kind == "cifar10" else (["train"], ["test"])
    labels = {}
    for split, names in zip(("train", "val"), files):
        labels[split] = []
        for name in names:
            y = rng.integers(0, n_classes, per_batch).tolist()
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            with open(os.path.join(root, name), "wb") as f:
                pickle.dump({"data": data, label_key: y}, f)
            labels[split] += y
    meta, key = ("batches.meta", "label_names") if kind == "cifar10" else ("meta", "fine_label_names")
    with open(os.path.join(root, meta), "wb") as f:
        pickle.dump({key: [f"name{k}" for k in range(n_classes)]}, f)
    return labels["train"], labels["val"]


def write(source, path, **kw):
    """The real writer, one worker (fast to start on 2 cores)."""
    from resnext_dist.data.write import write_beton

    kw.setdefault("workers", 1)
    return write_beton(source, str(path), **kw)


def unnormalize(images) -> np.ndarray:
    """Loader output (float NCHW, ImageNet-normalized) back to uint8 NHWC pixels."""
    import torch

    from resnext_dist.data.normalize import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    pixels = (images.float().cpu() * std + mean).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def run_two_ranks(cfg_fields: dict, out_dir, timeout=420, nproc=2):
    """Launch `probe` on `nproc` (2) ranks with torchrun (gloo, loopback); returns the ranks' records."""
    from tests.tiny import PYTHON, REPO, env, free_port

    os.makedirs(out_dir, exist_ok=True)
    cmd = [PYTHON, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "tests.data_helpers", json.dumps(cfg_fields), str(out_dir)]
    result = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    records = []
    for rank in range(nproc):
        with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
            records.append(json.load(f))
    return records


def probe(cfg_fields: dict, out_dir: str) -> None:
    import torch

    from resnext_dist.config import DistConfig
    from resnext_dist.data import build_loaders
    from resnext_dist.dist import all_reduce, close_distributed, init_distributed

    dist = init_distributed(DistConfig(backend="gloo"))
    num_classes, global_batch = cfg_fields.pop("num_classes"), cfg_fields.pop("global_batch", 0)
    start = cfg_fields.pop("start", None)
    train, val = build_loaders(data_cfg(**cfg_fields), dist, seed=7, num_classes=num_classes, channels_last=True,
                               global_batch=global_batch)
    record = {"rank": dist.rank, "batches_per_epoch": train.batches_per_epoch, "val_num_images": val.num_images,
              "val_batches": len(val), "reading": getattr(train, "reading", None), "val_path": getattr(val, "path", "")}
    if start is not None:  # a resume at `start` (the world-size change test): only epoch 1 from there is read
        record["epoch1_skip"] = [y.tolist() for _, y in train.epoch(1, res=16, start=start)]
        with open(os.path.join(out_dir, f"rank{dist.rank}.json"), "w") as f:
            json.dump(record, f)
        close_distributed()
        return
    for epoch in (0, 1):
        record[f"epoch{epoch}"] = [y.tolist() for _, y in train.epoch(epoch, res=cfg_fields.get("train_res", 16))]
    start = SKIP * (global_batch or train.global_batch)
    record["epoch1_skip"] = [y.tolist() for _, y in train.epoch(1, res=16, start=start)]
    record["val"] = [y.tolist() for _, y in val]
    count = torch.tensor([sum(len(b) for b in record["val"])])
    record["val_count_all_ranks"] = int(all_reduce(count).item())
    with open(os.path.join(out_dir, f"rank{dist.rank}.json"), "w") as f:
        json.dump(record, f)
    close_distributed()


if __name__ == "__main__":
    from resnext_dist.commandline import exit_without_teardown

    probe(json.loads(sys.argv[1]), sys.argv[2])
    exit_without_teardown(0)  # as the trainer ends: gloo's teardown was seen to abort a finished rank
