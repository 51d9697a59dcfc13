"""The library names its own arguments in backticks; the command line shows the flags a user types instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from vipcli.options import flag_message
from vipcli_model.errors import VipError


def _device_name():
    from vipcli_model.device import pick_device

    pick_device("tpu")


def _fp16_on_cpu():
    import torch

    from vipcli_model.device import pick_dtype

    pick_dtype(torch.device("cpu"), "fp16")


def _custom_protocol_without_ratio():
    from vipcli_model.evaluation.protocol import resolve_protocol

    resolve_protocol("custom")


def _server_without_its_model():
    from vipcli_model.captioning.backends import CaptionerSpec

    CaptionerSpec(url="http://h/v1")


def _training_ratio():
    from vipcli_model.captioning.questions import parse_ratio

    parse_ratio("1x")


def _keywords_for_training(tmp_path: Path):
    from vipcli_model.captioning.batch import caption_images

    caption_images([], None, for_training=True, keywords="snow")


def _missing_feature_weights(tmp_path: Path):
    from vipcli_model.evaluation.inception import find_inception_weights

    find_inception_weights(tmp_path / "nothing.pth")


def _missing_pred_folder(tmp_path: Path):
    from vipcli_model.evaluation.scoring import score_pairs

    score_pairs(tmp_path / "pred", tmp_path)


def _run_folder_in_use(tmp_path: Path):
    from vipcli_model.training.run_files import check_fresh_run_dir

    (tmp_path / "checkpoints" / "step_00000010").mkdir(parents=True)
    check_fresh_run_dir(tmp_path)


def _changed_on_resume():
    from vipcli_model.training.config import TrainConfig, resumed_config

    resumed_config(TrainConfig(lr=1e-4), {"lr": 1e-3})


def _bad_config_file(tmp_path: Path):
    from vipcli_model.training.config import load_toml

    load_toml(tmp_path / "train.toml")


@pytest.mark.parametrize(
    ("cause", "library", "command_line"),
    [
        (_device_name, "`device` 'tpu' is not a device", "--device 'tpu' is not a device"),
        (_fp16_on_cpu, "`dtype` fp16 is not supported on CPU", "--dtype fp16 is not supported on CPU"),
        (_custom_protocol_without_ratio, "`protocol` custom needs `ratio` R", "--protocol custom needs --ratio R"),
        (
            _server_without_its_model,
            "`captioner_url` http://h/v1 needs `captioner_model` NAME",
            "--captioner-url http://h/v1 needs --captioner-model NAME",
        ),
        (_training_ratio, "`ratio` '1x' is out of range", "--ratio '1x' is out of range"),
        (
            _keywords_for_training,
            "`keywords` steer the invented Surrounding",
            "--keywords steer the invented Surrounding",
        ),
        (_missing_feature_weights, "`feature_weights`", "--feature-weights"),
        (_missing_pred_folder, "`pred_dir`", "--pred"),
        (
            _run_folder_in_use,
            "pass `resume=True` to continue it, or choose another `run_dir`",
            "pass --resume to continue it, or choose another --out",
        ),
        (_changed_on_resume, "`resume=True` continues the run", "--resume continues the run"),
        (_bad_config_file, "config file", "config file"),
    ],
)
def test_library_errors_name_arguments_and_the_cli_shows_flags(cause, library, command_line, tmp_path):
    with pytest.raises(VipError) as raised:
        cause(tmp_path) if cause.__code__.co_argcount else cause()
    message = str(raised.value)
    assert library in message and " --" not in message
    assert command_line in flag_message(message)


def test_a_name_that_is_one_command_s_own_becomes_its_flag_only_there():
    message = "`settings` must name at least one prompt setting"
    assert flag_message(message, "eval") == "--prompts must name at least one prompt setting"
    assert flag_message(message, "outpaint") == message


def test_every_flag_in_the_table_is_one_a_command_has():
    """A name mapped to a flag that no command takes would send a user to an option that does not exist."""
    from typer.main import get_command

    from vipcli.main import app
    from vipcli.options import COMMAND_FLAGS, FLAGS

    taken = set()
    for command in get_command(app).commands.values():
        for sub in getattr(command, "commands", {command.name: command}).values():
            for parameter in sub.params:
                taken.update(parameter.opts + parameter.secondary_opts)
    flags = [*FLAGS.values(), *(flag for table in COMMAND_FLAGS.values() for flag in table.values())]
    unknown = [flag for flag in flags if flag.startswith("-") and flag.split()[0] not in taken]
    assert not unknown
