"""optim.optimizer: AdamW (torch's) beside SGD, with the same parameter groups (no decay on BN and biases)."""
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
