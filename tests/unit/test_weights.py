"""model.init: weights from torchvision's format, our export, final weights and checkpoints; strict except a
classifier of another size; nothing read can run code."""
import os
import pickle

import pytest
import torch
import torchvision
from torchvision.models.resnet import Bottleneck as TvBottleneck
from torchvision.models.resnet import ResNet as TvResNet

from resnext_dist.run import checkpoint as ckpt
from resnext_dist.config import load_config
from resnext_dist.errors import InputError
from resnext_dist.weights.export import write_export
from resnext_dist.models import resnext
from resnext_dist.weights import init_model, read_state_dict
from tests.tiny import TINY

# Small enough to build in milliseconds, and the same net as torchvision's ResNet(Bottleneck, [1,1,1,1],
# groups=2, width_per_group=4) with the ImageNet stem: torchvision's key names and shapes.
SMALL = dict(layers=[1, 1, 1, 1], cardinality=2, group_width=4)


def ours(num_classes=10, **kw):
    return resnext("resnext50_32x4d", num_classes=num_classes, **{**SMALL, **kw})


def torchvision_file(tmp_path, num_classes=1000):
    torch.manual_seed(1)
    theirs = TvResNet(TvBottleneck, [1, 1, 1, 1], groups=2, width_per_group=4, num_classes=num_classes).eval()
    path = str(tmp_path / "resnext_small-0123abcd.pth")
    torch.save(theirs.state_dict(), path)  # as torchvision saves its downloads: a plain state dict
    return theirs, path


def same_params(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k not in skip)


def test_torchvision_state_dict_same_classes_loads_strictly_and_computes_the_same(tmp_path):
    theirs, path = torchvision_file(tmp_path, num_classes=10)
    model = ours(10).eval()
    note = init_model(model, path)
    assert path in note and "re-initialized" not in note
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), theirs(x), atol=1e-5)


def test_other_num_classes_keeps_a_fresh_classifier_and_says_so(tmp_path):
    theirs, path = torchvision_file(tmp_path, num_classes=1000)
    torch.manual_seed(5)
    model = ours(7)
    fresh_fc = model.fc.weight.detach().clone()
    note = init_model(model, path)
    assert "classifier fc re-initialized for 7 classes (the weights have 1000)" in note
    assert same_params(model, theirs, skip=("fc.weight", "fc.bias"))
    assert torch.equal(model.fc.weight, fresh_fc)


def test_refuses_other_classifier_when_asked_to_be_strict(tmp_path):
    _, path = torchvision_file(tmp_path, num_classes=1000)
    with pytest.raises(InputError, match=r"fc\.weight \(1000, 2048\) vs \(7, 2048\)"):
        init_model(ours(7), path, new_classifier_ok=False)


def test_architecture_mismatch_names_the_file_and_keys(tmp_path):
    _, path = torchvision_file(tmp_path)
    with pytest.raises(InputError) as e:
        init_model(ours(1000, layers=[2, 1, 1, 1]), path)
    msg = str(e.value)
    assert msg.startswith(path) and "missing: layer1.1.conv1.weight" in msg and "\n" not in msg
    with pytest.raises(InputError, match="shape mismatch: conv1.weight"):
        init_model(ours(1000, stem="cifar"), path)


def test_from_our_export_final_weights_and_checkpoint(tmp_path):
    cfg = load_config(None, TINY)
    torch.manual_seed(3)
    from resnext_dist.models import build_model
    src = build_model(cfg.model)
    write_export(src, cfg, str(tmp_path / "run" / "export"))
    final = str(tmp_path / "final_weights.pt")
    ckpt.atomic_save(src.state_dict(), final)
    opt = torch.optim.SGD(src.parameters(), lr=0.1)
    state = ckpt.TrainState(src, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), step=12,
                            config_yaml="x: 1\n")
    ckpt_dir = tmp_path / "run2" / "checkpoints"
    os.makedirs(ckpt_dir)
    ckpt.atomic_save(state.state_dict(), str(ckpt_dir / "step_00000012.pt"))  # with numpy RNG state inside
    for path, kind in ((str(tmp_path / "run" / "export"), "export"), (str(tmp_path / "run"), "export"),
                       (str(tmp_path / "run" / "export" / "model.json"), "export"), (final, "state dict"),
                       (str(ckpt_dir / "step_00000012.pt"), "checkpoint at step 12"),
                       (str(tmp_path / "run2"), "checkpoint at step 12")):
        torch.manual_seed(9)
        model = build_model(cfg.model)
        note = init_model(model, path)
        assert f"({kind}," in note, note
        assert same_params(model, src), path


def test_ddp_and_compiled_key_prefixes_are_accepted(tmp_path):
    src = ours(10)
    path = str(tmp_path / "ddp.pt")
    torch.save({f"module._orig_mod.{k}": v for k, v in src.state_dict().items()}, path)
    model = ours(10)
    init_model(model, path)
    assert same_params(model, src)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling this creates the marker file


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump", "in a checkpoint"])
def test_a_crafted_pickle_is_refused_and_never_executed(tmp_path, how):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "weights.pt")
    evil = _Evil(marker)
    if how == "torch.save":
        torch.save({"fc.weight": torch.zeros(1), "x": evil}, path)
    elif how == "pickle.dump":
        with open(path, "wb") as f:
            pickle.dump(evil, f)
    else:
        torch.save({"model": ours(10).state_dict(), "step": 3, "rng": evil}, path)
    assert not os.path.exists(marker)
    with pytest.raises(InputError, match=f"^{path}: refused: not a") as e:
        init_model(ours(10), path)
    if how != "pickle.dump":  # a protocol-4 pickle stops at its first opcode, before naming the global
        assert "would run code (Unsupported global: GLOBAL io.open)" in str(e.value)
    assert not os.path.exists(marker)


def test_missing_garbage_and_non_weights_files(tmp_path):
    with pytest.raises(InputError, match="nope.pt: no such file or directory"):
        read_state_dict(str(tmp_path / "nope.pt"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file at all" * 10)
    with pytest.raises(InputError, match="garbage.pth: refused: not a weights file torch.load"):
        read_state_dict(str(garbage))
    torch.save([1, 2, 3], str(tmp_path / "list.pt"))
    with pytest.raises(InputError, match="list.pt: not a state dict"):
        read_state_dict(str(tmp_path / "list.pt"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(InputError, match="bad.safetensors: unreadable safetensors file"):
        read_state_dict(str(tmp_path / "bad.safetensors"))
    os.makedirs(tmp_path / "empty_run")
    with pytest.raises(InputError, match="empty_run: a directory with no weights"):
        read_state_dict(str(tmp_path / "empty_run"))


def test_full_torchvision_resnext50_state_dict_loads_into_the_constructor(tmp_path):
    from resnext_dist.models import resnext50_32x4d
    theirs = torchvision.models.resnext50_32x4d()
    path = str(tmp_path / "resnext50_32x4d-1a0047aa.pth")
    torch.save(theirs.state_dict(), path)
    model = resnext50_32x4d(num_classes=10)
    init_model(model, path)
    assert same_params(model, theirs, skip=("fc.weight", "fc.bias"))
    assert model.fc.out_features == 10


@pytest.mark.parametrize("name", ["w.pth", "w.safetensors", "export/model.safetensors", "checkpoints/step_00000003.pt"])
@pytest.mark.parametrize("kind", ["fifo", "device-link"])
def test_weights_that_are_no_regular_file_are_refused_at_once_naming_them(tmp_path, name, kind):
    """model.init, evaluate and predict read weights here: a FIFO (or /dev/zero) where a file is expected, given by
    its name or found in a run directory, is one line, never a hang (issue 25 item 4)."""
    from tests.unit.test_files import deadline, not_regular

    os.makedirs(os.path.dirname(str(tmp_path / "run" / name)), exist_ok=True)
    path = not_regular(tmp_path / "run" / os.path.dirname(name), kind)
    os.rename(path, str(tmp_path / "run" / name))
    given = str(tmp_path / "run" / name) if name.startswith("w.") else str(tmp_path / "run")
    # a run directory's export/ is looked for as a regular file (layout.find_weights): a FIFO there is no export
    words = "a directory with no weights" if name.startswith("export/") else "not a regular file"
    with deadline(), pytest.raises(InputError, match=f"^{tmp_path / 'run'}.*: .*{words}"):
        init_model(ours(10), given)
