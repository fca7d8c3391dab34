"""optim.optimizer: AdamW (torch's) beside SGD, with the same parameter groups (no decay on BN and biases);
optim.loss: bce (timm's RSB recipes) beside cross-entropy."""
import pytest
import torch

from resnext_dist.config import load_config
from resnext_dist.errors import InputError
from resnext_dist.models import build_model
from resnext_dist.optim import build_optimizer

TINY = ["model.layers=[1,1,1,1]", "model.cardinality=2", "model.group_width=4", "model.base_channels=8"]


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_the_optimizer_key_builds_torch_optimizer_with_no_decay_on_bn_and_biases(name, cls):
    cfg = load_config(None, [*TINY, f"optim.optimizer={name}", "optim.weight_decay=0.05", "optim.lr=0.001"])
    model = build_model(cfg.model)
    opt = build_optimizer(model, cfg.optim, 512)
    assert type(opt) is cls and opt.param_groups[0]["lr"] == pytest.approx(0.002)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    bn_and_bias = {id(p) for m in model.modules() for n, p in m.named_parameters(recurse=False)
                   if isinstance(m, torch.nn.BatchNorm2d) or n == "bias"}
    assert {id(p) for p in plain["params"]} == bn_and_bias


def test_an_unknown_optimizer_is_one_line_naming_the_key():
    with pytest.raises(InputError, match=r"optim.optimizer='lamb': must be one of sgd, adamw"):
        load_config(None, ["optim.optimizer=lamb"])


def test_bce_is_timm_binary_cross_entropy_on_smoothed_one_hot_and_takes_soft_targets():
    from resnext_dist.optim.losses import LOSSES
    logits, labels = torch.randn(6, 10), torch.tensor([0, 1, 2, 3, 4, 5])
    onehot = torch.nn.functional.one_hot(labels, 10).float()
    smoothed = onehot * 0.9 + 0.01  # off 0.1 / 10, on 1 - 0.1 + 0.01
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, smoothed)
    assert torch.allclose(LOSSES["bce"](logits, labels, 0.1), expected)
    assert torch.allclose(LOSSES["bce"](logits, onehot, 0.1), expected)  # mixup's probabilities: the same path
    assert torch.allclose(LOSSES["ce"](logits, labels, 0.1),
                          torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1))
    with pytest.raises(InputError, match=r"optim.loss='focal': must be one of ce, bce"):
        load_config(None, ["optim.loss=focal"])
