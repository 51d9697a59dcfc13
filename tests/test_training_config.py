"""Training config (TOML, overrides, one error for every problem, resume rules) and the LR schedule."""

from __future__ import annotations

import math

import pytest

from vipcli_model.errors import OptionError
from vipcli_model.training.config import (
    TrainConfig,
    apply_overrides,
    check_config,
    config_from_dict,
    load_toml,
    resumed_config,
)
from vipcli_model.training.schedule import lr_factor


def test_toml_then_overrides(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text("max_steps = 40\nlr = 2e-4\nema = true\nmask_mix = { ratio = 1.0, irregular = 0.5 }\n")
    config = apply_overrides(TrainConfig(data_dir="d"), load_toml(path), source=str(path))
    config = apply_overrides(config, {"lr": 5e-5})
    assert (config.max_steps, config.lr, config.ema) == (40, 5e-5, True)
    assert config.mask_mix == {"ratio": 1.0, "irregular": 0.5}
    check_config(config)
    (tmp_path / "t2.toml").write_text("[train]\nbatch_size = 8\n")
    assert apply_overrides(TrainConfig(), load_toml(tmp_path / "t2.toml")).batch_size == 8


def test_every_key_problem_in_one_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('max_step = 10\nlearning_rate = 1\nbatch_size = "four"\nema = 1\n')
    with pytest.raises(OptionError) as raised:
        apply_overrides(TrainConfig(), load_toml(path), source=str(path))
    message = str(raised.value)
    for part in (
        "unknown key 'max_step' (did you mean max_steps?)",
        "'learning_rate'",
        "batch_size = 'four'",
        "ema = 1",
    ):
        assert part in message
    (tmp_path / "broken.toml").write_text("max_steps = = 3")
    with pytest.raises(OptionError, match="not valid TOML"):
        load_toml(tmp_path / "broken.toml")


def test_every_value_problem_in_one_error():
    config = TrainConfig(
        data_dir="d",
        mode="qlora",
        max_steps=0,
        lr=-1.0,
        resolution=100,
        prompt_dropout=2.0,
        mask_mix={"ratio": 0.0, "spiral": 1.0},
        keep=0,
    )
    with pytest.raises(OptionError) as raised:
        check_config(config)
    message = str(raised.value)
    for part in ("mode 'qlora'", "max_steps 0", "lr -1.0", "resolution 100", "prompt_dropout 2.0", "spiral", "keep 0"):
        assert part in message


def test_resume_allows_only_bookkeeping_changes():
    saved = TrainConfig(data_dir="/d", max_steps=10, lr=1e-4)
    extended = resumed_config(saved, {"max_steps": 20, "save_every": 5, "lr": 1e-4, "data_dir": "/d"})
    assert extended.max_steps == 20 and extended.save_every == 5 and extended.lr == 1e-4
    with pytest.raises(OptionError) as raised:
        resumed_config(saved, {"lr": 1e-3, "batch_size": 8, "max_steps": 30})
    assert "lr (0.0001 -> 0.001)" in str(raised.value) and "batch_size" in str(raised.value)
    assert config_from_dict(saved.to_dict()) == saved


def test_lr_schedule_is_a_pure_function_of_the_step():
    kwargs = dict(max_steps=110, warmup_steps=10, min_ratio=0.1)
    warmup = [lr_factor(step, **kwargs) for step in range(10)]
    assert warmup == pytest.approx([(step + 1) / 10 for step in range(10)])
    assert lr_factor(10, **kwargs) == pytest.approx(1.0)
    decay = [lr_factor(step, **kwargs) for step in range(10, 110)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))  # monotone cosine
    assert lr_factor(109, **kwargs) == pytest.approx(0.1) and lr_factor(500, **kwargs) == pytest.approx(0.1)
    assert lr_factor(60, **kwargs) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert lr_factor(50, max_steps=100, warmup_steps=0, schedule="constant") == 1.0
    assert lr_factor(0, max_steps=100, warmup_steps=0) == 1.0
    assert lr_factor(0, max_steps=1, warmup_steps=0) == 1.0
    with pytest.raises(ValueError):
        lr_factor(-1, max_steps=10, warmup_steps=0)
