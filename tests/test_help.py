"""`--help` as a person reads it, in 80- and 120-column terminals, and click's usage errors as one line."""

from __future__ import annotations

import re

import pytest

COMMANDS = [
    [],
    ["outpaint"],
    ["edit"],
    ["caption"],
    ["train"],
    ["eval"],
    ["env"],
    ["models"],
    ["models", "list"],
    ["models", "download"],
    ["models", "path"],
]


@pytest.fixture()
def help_at(vip_main, monkeypatch):
    def render(command: list[str], columns: int) -> str:
        monkeypatch.setenv("COLUMNS", str(columns))
        monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
        result = vip_main(*command, "--help")
        assert result.returncode == 0, result.stderr
        return result.stdout

    return render


def _description(text: str) -> list[list[str]]:
    """The paragraphs between the usage line and the first panel, as lists of lines."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next((i for i, line in enumerate(lines) if line.startswith("╭")), len(lines))
    paragraphs, current = [], []
    for line in lines[start:end]:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            paragraphs.append(current)
            current = []
    return paragraphs + ([current] if current else [])


@pytest.mark.parametrize("columns", [80, 120])
def test_help_fits_the_terminal(help_at, columns):
    """No line overflows or is cut, flags show no type, and prose re-wraps to the width as one paragraph."""
    from vipcli.help import build
    from vipcli.main import app

    root = build(app)
    for command in COMMANDS:
        text = help_at(command, columns)
        name = " ".join(["vip", *command])
        assert "<bool>" not in text, name
        assert "…" not in text, name  # Rich cuts a cell it cannot fit with an ellipsis
        assert max(map(len, text.splitlines())) <= columns, name
        click_command = root
        for word in command:
            click_command = click_command.commands[word]
        for line in (click_command.help or "").splitlines():
            if line.startswith(" "):  # an example keeps its line
                assert line.rstrip() in text, (name, line)
        for paragraph in _description(text):
            if paragraph[0].startswith("  "):
                continue
            for line, following in zip(paragraph, paragraph[1:]):
                # filled as a paragraph: the next line's first word would not have fitted on this one
                assert len(line) + 1 + len(following.split()[0]) > columns - 1, (name, line, following)


def test_usage_names_the_arguments(help_at):
    usage = {
        ("outpaint",): "Usage: vip outpaint [OPTIONS] IMAGES...",
        ("edit",): "Usage: vip edit [OPTIONS] IMAGES... INSTRUCTION",
        ("train",): "Usage: vip train [OPTIONS] [DATA_DIR]",
        ("models", "download"): "Usage: vip models download [OPTIONS] MODEL",
    }
    for command, line in usage.items():
        text = help_at(list(command), 80)
        assert line in text
        assert "{" not in text.splitlines()[1]


def test_long_names_and_defaults_are_whole_at_80_columns(help_at):
    outpaint = help_at(["outpaint"], 80)
    assert "stable-diffusion-v1-5/stable-diffusion-inpainting" in outpaint  # the default model, in the description
    model_row = outpaint[outpaint.index("│ --model ") :]
    assert "sd15-inpaint" in model_row[: model_row.index("│ --model-config")]
    train = help_at(["train"], 80)
    assert "│ --gradient-checkpointing " in train
    assert "--no-gradient-checkpointing" in train


def test_each_command_shows_only_its_own_defaults(help_at):
    edit = help_at(["edit"], 120)
    assert "outpaint" not in edit.replace("pip install 'vip-outpaint[dask]'", "")  # brackets shown, not markup
    assert re.search(r"--scheduler .*tcd\.\W+Default:\W+the\W+model's\W+own\.", edit, re.S)
    assert "flow-match" not in edit  # a FLUX scheduler: vip edit has none
    evaluation = help_at(["eval"], 120)
    assert "outpaint default" not in evaluation and "vip outpaint the model" not in evaluation


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["outpaint"], r"error: missing argument 'IMAGES\.\.\.'; see vip outpaint --help"),
        (["edit"], r"error: missing argument 'IMAGES\.\.\.'; see vip edit --help"),
        (["models", "download"], r"error: missing argument 'MODEL'; see vip models download --help"),
        (["outpaint", "x.png", "--bogus"], r"error: no such option: --bogus; see vip outpaint --help"),
        (
            ["models", "download", "a", "b"],
            r"error: got unexpected extra argument.* \(b\); see vip models download --help",
        ),
        (["outpaint", "x.png", "--steps", "many"], r"error: invalid value for '--steps': .+; see vip outpaint --help"),
    ],
)
def test_usage_errors_are_one_line(vip_main, args, pattern):
    """Click's own errors read as vip's do: one line on stderr, exit 2; not the usage and a framed panel."""
    result = vip_main(*args)
    assert result.returncode == 2
    assert re.fullmatch(pattern, result.stderr.strip()), result.stderr
    assert result.stdout == ""


def test_vip_alone_shows_its_help(vip_main):
    result = vip_main()
    assert "Usage: vip [OPTIONS] COMMAND [ARGS]..." in result.stdout
    assert "outpaint" in result.stdout


def test_no_gradient_checkpointing_still_turns_off_what_the_config_turns_on(tmp_path, vip_main, monkeypatch):
    """The two-sided flag is two flags (so 80 columns show its name whole); the negative one still wins."""
    import vipcli_model.training.preflight as preflight
    from vipcli_model.errors import OptionError

    config = tmp_path / "train.toml"
    config.write_text("gradient_checkpointing = true\n")
    seen = []

    def inspect_training(settings):
        seen.append(settings.gradient_checkpointing)
        raise OptionError("seen")

    monkeypatch.setattr(preflight, "inspect_training", inspect_training)
    for flags in ([], ["--no-gradient-checkpointing"]):
        result = vip_main("train", tmp_path, "--out", tmp_path / "run", "--config", config, *flags, "--dry-run")
        assert result.returncode == 2 and "seen" in result.stderr
    result = vip_main("train", tmp_path, "--out", tmp_path / "run", "--gradient-checkpointing", "--dry-run")
    assert seen == [True, False, True]
