"""Progressive resizing: min_train_res -> train_res between ramp_start_epoch and ramp_end_epoch."""
from resnext_dist.data import train_res_for_epoch
from tests.data_helpers import data_cfg


def test_off_by_default():
    cfg = data_cfg(train_res=224)
    assert [train_res_for_epoch(cfg, e) for e in range(3)] == [224, 224, 224]


def test_ffcv_imagenet_rn50_schedule_in_multiples_of_32():
    # ffcv-imagenet rn50 configs: 160 -> 192 (here 160 -> 224 to see several steps)
    cfg = data_cfg(min_train_res=160, train_res=224, ramp_start_epoch=2, ramp_end_epoch=10)
    res = [train_res_for_epoch(cfg, e) for e in range(13)]
    assert res[:3] == [160, 160, 160] and res[10:] == [224, 224, 224]
    assert all(r % 32 == 0 for r in res) and res == sorted(res)
    assert res[6] == 192  # halfway


def test_small_images_ramp_in_multiples_of_8():
    cfg = data_cfg(min_train_res=16, train_res=32, ramp_start_epoch=0, ramp_end_epoch=4)
    assert [train_res_for_epoch(cfg, e) for e in range(6)] == [16, 24, 24, 32, 32, 32]  # 20 and 28 round half up


def test_stays_within_min_and_max_when_they_are_not_multiples():
    cfg = data_cfg(min_train_res=100, train_res=130, ramp_start_epoch=0, ramp_end_epoch=3)
    res = [train_res_for_epoch(cfg, e) for e in range(5)]
    assert res[0] == 100 and res[-1] == 130 and all(100 <= r <= 130 for r in res) and res == sorted(res)


def test_ramp_of_zero_length_jumps():
    cfg = data_cfg(min_train_res=64, train_res=128, ramp_start_epoch=3, ramp_end_epoch=3)
    assert [train_res_for_epoch(cfg, e) for e in (2, 3, 4)] == [64, 128, 128]
