"""train.compile_mode: its values reach torch.compile; a mode without train.compile is refused in one line."""
import pytest
import torch

from resnext_dist.compiling import COMPILE_MODES, compile_module
from resnext_dist.config import load_config
from resnext_dist.errors import InputError


@pytest.mark.parametrize("name", sorted(COMPILE_MODES))
def test_each_mode_is_the_torch_compile_mode_it_names(name, monkeypatch):
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda module, **kw: seen.update(kw) or module)
    module = torch.nn.Linear(2, 2)
    assert compile_module(module, name) is module
    assert seen.get("mode") == (None if name == "default" else name)


def test_a_mode_without_compile_and_an_unknown_mode_are_one_line_errors():
    with pytest.raises(InputError, match=r"train.compile_mode=reduce-overhead needs train.compile=true"):
        load_config(None, ["data.loader=synthetic", "train.compile_mode=reduce-overhead"])
    with pytest.raises(InputError, match=r"train.compile_mode='graphs': must be one of default, reduce-overhead"):
        load_config(None, ["data.loader=synthetic", "train.compile=true", "train.compile_mode=graphs"])
    assert load_config(None, ["data.loader=synthetic", "train.compile=true",
                              "train.compile_mode=reduce-overhead"]).train.compile_mode == "reduce-overhead"
