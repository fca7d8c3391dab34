"""Training augmentations on the device (data/augment*.py): torchvision's policies per image, random erasing,
mixup / cutmix with soft targets; their statistics over many keyed draws; the same (seed, epoch, position) the
same image on any rank; bad values refused naming the key."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from resnext_dist.config import load_config
from resnext_dist.data.augment import build_augment, wanted
from resnext_dist.data.augment_batch import (ERASE_RATIO, ERASE_SCALE, ERASING, BatchAugment, erase_boxes)
from resnext_dist.data.augment_policy import randaugment, trivialaugment
from resnext_dist.data.keyed import keyed_uniforms
from resnext_dist.data.normalize import DeviceNormalize
from resnext_dist.errors import InputError

CPU = torch.device("cpu")


def batch(n=8, res=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    images, labels = DeviceNormalize(CPU, channels_last=False)(pixels, labels)
    return pixels, images.clone(), labels  # clone: the CPU normalizer recycles its outputs


def augment(**kw):
    args = dict(policy=None, erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, seed=7, num_classes=10, device=CPU)
    args.update(kw)
    return BatchAugment(**args)


@pytest.mark.parametrize("overrides, message", [
    (["data.mixup_alpha=-0.5"], r"data.mixup_alpha=-0.5: must be >= 0"),
    (["data.cutmix_alpha=-1"], r"data.cutmix_alpha=-1.0: must be >= 0"),
    (["data.random_erasing=1.5"], r"data.random_erasing=1.5: must be in \[0, 1\]"),
    (["data.auto_augment=autoaugment"], r"data.auto_augment='autoaugment': must be one of none, trivialaugment, "
                                        r"randaugment"),
    (["data.ra_reps=0"], r"data.ra_reps=0: must be >= 1"),
])
def test_bad_values_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(InputError, match=message) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def test_nothing_asked_builds_nothing():
    d = load_config(None, []).data
    assert not wanted(d) and build_augment(d, seed=0, num_classes=10, device=CPU) is None


def test_trivialaugment_draws_torchvision_ops_and_bins_uniformly():
    policy = trivialaugment()
    u = keyed_uniforms(1, 0, np.arange(28000), policy.draws)
    (row,) = policy.choices(u, 224, 224)
    names = [name for name, _ in row]
    freq = np.array([names.count(op) for op in v2.TrivialAugmentWide._AUGMENTATION_SPACE]) / len(names)
    assert len(freq) == 14 and np.abs(freq - 1 / 14).max() < 0.01
    rotations = np.array([m for name, m in row if name == "Rotate"])
    assert np.abs(rotations).max() == 135.0 and abs((rotations < 0).mean() - 0.5) < 0.03  # signed, 50/50
    levels = np.unique(np.abs(rotations))
    assert np.allclose(levels, np.linspace(0, 135, 31)[np.isin(np.linspace(0, 135, 31), levels)])
    assert len(levels) == 31  # every one of the 31 bins drawn


def test_randaugment_is_two_ops_at_torchvision_magnitude_9():
    policy = randaugment()
    u = keyed_uniforms(1, 0, np.arange(4000), policy.draws)
    slots = policy.choices(u, 224, 224)
    assert len(slots) == 2
    rot = {abs(m) for slot in slots for name, m in slot if name == "Rotate"}
    assert rot == {float(torch.linspace(0.0, 30.0, 31)[9])}


def test_grouped_batch_equals_torchvision_image_by_image():
    pixels, _, _ = batch(n=16)
    policy = trivialaugment()
    u = keyed_uniforms(3, 1, np.arange(16), policy.draws)
    out = policy(pixels.clone(), u)
    (row,) = policy.choices(u, 24, 24)
    assert sum(name != "Identity" for name, _ in row) > 8
    for n, (name, magnitude) in enumerate(row):
        one = policy.tv._apply_image_or_video_transform(pixels[n:n + 1], name, magnitude,
                                                        interpolation=policy.tv.interpolation, fill=policy.tv._fill)
        assert torch.equal(out[n:n + 1], one), name


def test_the_same_seed_epoch_and_position_give_the_same_image_on_any_rank():
    """Rank 0 of 1 holds positions 0-7; rank 1 of 2 would hold 4-7 in a batch of its own: same images out."""
    _, images, labels = batch(n=8)
    aug = augment(policy="randaugment", erasing=0.5)
    whole, _ = aug(images.clone(), labels, np.arange(8), epoch=2)
    half, _ = aug(images[4:].clone(), labels[4:], np.arange(4, 8), epoch=2)
    assert torch.equal(whole[4:], half)
    again, _ = augment(policy="randaugment", erasing=0.5)(images.clone(), labels, np.arange(8), epoch=2)
    assert torch.equal(whole, again)  # a fresh process (a resume) draws the same
    other, _ = aug(images.clone(), labels, np.arange(8), epoch=3)
    assert not torch.equal(whole, other)  # another epoch, other draws


def test_the_uint8_round_trip_is_exact():
    pixels, images, _ = batch()
    aug = augment(policy="trivialaugment")
    back = ((images - aug.shift) / aug.scale).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(back, pixels)


def test_erasing_probability_area_and_ratio():
    p, h, w = 0.25, 64, 48
    boxes = erase_boxes(keyed_uniforms(0, 0, np.arange(20000), 23, stream=ERASING), h, w, p)
    on = boxes[:, 2] > 0
    assert abs(on.mean() - p) < 0.01
    area = boxes[on, 2] * boxes[on, 3] / (h * w)
    assert area.min() >= ERASE_SCALE[0] * 0.8 and area.max() <= ERASE_SCALE[1] * 1.2
    ratio = boxes[on, 2] / boxes[on, 3]
    assert ratio.min() >= ERASE_RATIO[0] * 0.7 and ratio.max() <= ERASE_RATIO[1] * 1.4
    assert (boxes[on, 0] + boxes[on, 2] <= h).all() and (boxes[on, 1] + boxes[on, 3] <= w).all()


def test_erasing_zeroes_the_box_and_nothing_else():
    _, images, labels = batch(n=64)
    out, same_labels = augment(erasing=0.5)(images.clone(), labels, np.arange(64), epoch=0)
    assert same_labels is labels
    changed = (out != images).flatten(1).any(1)
    assert 0.3 < changed.float().mean() < 0.7
    assert ((out == images) | (out == 0)).all()


def test_mixup_targets_sum_to_one_and_follow_beta():
    _, images, labels = batch(n=8)
    aug, lams = augment(mixup_alpha=0.2), []
    for key in range(300):
        out, targets = aug(images.clone(), labels, np.arange(key * 8, key * 8 + 8), epoch=0)
        assert torch.allclose(targets.sum(1), torch.ones(8))
        lam = float(targets[0, labels[0]]) if labels[0] != labels[-1] else None
        if lam is not None:
            assert torch.allclose(out, lam * images + (1 - lam) * images.roll(1, 0), atol=1e-5)
            lams.append(lam)
    lams = np.array(lams)
    assert abs(lams.mean() - 0.5) < 0.06 and ((lams < 0.1) | (lams > 0.9)).mean() > 0.5  # Beta(0.2, 0.2): U-shaped


def test_cutmix_targets_are_the_pasted_area_and_mixup_or_cutmix_half_each():
    _, images, labels = batch(n=8, res=32)
    labels = torch.arange(8)  # all different: each target row names its two sources
    aug, cut, areas = augment(mixup_alpha=0.2, cutmix_alpha=1.0), 0, []
    for key in range(400):
        out, targets = aug(images.clone(), labels, np.arange(key * 8, key * 8 + 8), epoch=1)
        assert torch.allclose(targets.sum(1), torch.ones(8))
        pasted = (out != images).any(1)  # a pasted pixel differs in some channel (all 3 equal: ~1 in 16M)
        if ((out == images) | (out == images.roll(1, 0))).all():  # cutmix: every pixel from one of the two
            cut += 1
            area = pasted.float().mean((1, 2))
            assert torch.allclose(targets[torch.arange(8), labels.roll(1, 0)], area, atol=1e-6)
            areas.append(float(area[0]))
    assert abs(cut / 400 - 0.5) < 0.08
    assert 0.15 < np.mean(areas) < 0.5  # Beta(1,1) box of 1 - lam, clipped at the edges


def test_soft_targets_compose_with_label_smoothing():
    logits = torch.randn(4, 10)
    labels = torch.tensor([1, 2, 3, 4])
    onehot = F.one_hot(labels, 10).float()
    assert torch.allclose(F.cross_entropy(logits, onehot, label_smoothing=0.1),
                          F.cross_entropy(logits, labels, label_smoothing=0.1))
