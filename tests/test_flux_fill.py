"""The FLUX Fill family: a tiny FluxFill model built in code, loaded through the user's path.

C-T-S on joint attention is an additive mask over [Total | Center | Surrounding | image] tokens, given to every
double- and single-stream block; region strength 0 equals diffusers' plain FluxFillPipeline with the Total
prompt; the pooled CLIP input is the Total's; `vip outpaint --model DIR` runs end to end with the family's
defaults; `vip train` says in one line that FLUX is not trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import outpaint_args, pixels
from diffusers import FluxFillPipeline
from family_runs import outpaint_regions, quarters_to_generate, random_photo, run_two_steps, train_photos, vip_metadata
from tiny_models import save_tiny_flux_fill_model

from vipcli_model.config import ModelConfig
from vipcli_model.errors import ModelNotFoundError, OptionError
from vipcli_model.images.io import read_metadata
from vipcli_model.models.families import family_of_folder, family_of_pipeline
from vipcli_model.models.loading import check_inpainting, load_pipeline
from vipcli_model.pipelines.flux import VipOutpaintFluxFillPipeline, joint_attention_bias

TOTAL = "Center: a red barn; Surrounding: a green field"
TEXT = 16  # max_sequence_length in the library-level tests (the CLI runs with FLUX's 512)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    return save_tiny_flux_fill_model(tmp_path_factory.mktemp("tiny-flux-fill"))


@pytest.fixture(scope="module")
def flux_pipe(flux_dir) -> VipOutpaintFluxFillPipeline:
    return load_pipeline(ModelConfig(model=str(flux_dir), device="cpu", dtype="fp32"))


def _run(pipe, **kwargs) -> np.ndarray:
    return run_two_steps(pipe, 32, TOTAL, height=32, width=32, max_sequence_length=TEXT, **kwargs)


def _spy_on_flux_fill_calls(monkeypatch) -> dict:
    """The keyword arguments that reach diffusers' FluxFillPipeline call (the last call's win)."""
    seen = {}
    original = FluxFillPipeline.__call__

    def spy(self, **kwargs):
        seen.update(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(FluxFillPipeline, "__call__", spy)
    return seen


def test_family_from_the_configs_and_plain_flux_is_refused(flux_dir, flux_pipe):
    assert family_of_folder(flux_dir).name == "flux-fill"
    assert isinstance(flux_pipe, VipOutpaintFluxFillPipeline) and family_of_pipeline(flux_pipe).name == "flux-fill"
    assert flux_pipe.size_multiple == 2  # VAE factor 1, latents packed 2x2 (the real model: 16)
    text_to_image = type(
        "Pipe", (), {"transformer": type("T", (), {"config": type("C", (), {"in_channels": 64, "out_channels": None})})}
    )
    with pytest.raises(ModelNotFoundError, match="not a FLUX Fill model"):
        check_inpainting(text_to_image, "black-forest-labs/FLUX.1-dev")


def test_joint_mask_routes_center_and_surrounding_text_by_region():
    regions = torch.tensor([0.0, 1.0, 0.5])  # known, to generate, on the seam
    bias = joint_attention_bias(regions, text_length=2, strength=0.6, dtype=torch.float32, device=torch.device("cpu"))[
        0, 0
    ]
    total, center, surrounding, image = slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 9)
    known, generate, seam = 6, 7, 8
    assert torch.all(bias[image, image] == 0)  # image-image attention whole
    assert torch.allclose(bias[known, total], torch.tensor(0.4).log()) and torch.isinf(bias[known, surrounding]).all()
    assert torch.allclose(bias[known, center], torch.tensor(0.6).log())
    assert (
        torch.allclose(bias[generate, surrounding], torch.tensor(0.6).log())
        and torch.isinf(bias[generate, center]).all()
    )
    assert torch.allclose(bias[seam, center], torch.tensor(0.3).log()) and torch.allclose(
        bias[seam, surrounding], torch.tensor(0.3).log()
    )
    for block in (total, center, surrounding):  # each text stream sees itself and the image, not the other texts
        assert torch.all(bias[block, block] == 0) and torch.all(bias[block, image] == 0)
    assert torch.isinf(bias[total, center]).all() and torch.isinf(bias[center, surrounding]).all()
    plain = joint_attention_bias(regions, 2, 0.0, torch.float32, torch.device("cpu"))[0, 0]
    assert torch.isinf(plain[image, 2:6]).all() and torch.all(plain[image, total] == 0)


def test_every_block_gets_the_mask_over_the_three_texts(flux_pipe):
    seen = []
    processors = flux_pipe.transformer.attn_processors

    class Spy:
        def __init__(self, base):
            self.base = base

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
            seen.append((attention_mask, encoder_hidden_states is not None))
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    flux_pipe.transformer.set_attn_processor({name: Spy(base) for name, base in processors.items()})
    try:
        _run(flux_pipe, center_prompt="a red barn", surrounding_prompt="snowy mountains", region_strength=1.0)
    finally:
        flux_pipe.transformer.set_attn_processor(processors)
    assert {double for _, double in seen} == {True, False}  # double- and single-stream blocks
    assert all(mask is not None for mask, _ in seen)
    image_tokens = (32 // 2) ** 2
    assert seen[0][0].shape[-1] == 3 * TEXT + image_tokens


def test_region_strength_0_equals_the_plain_flux_fill_pipeline(flux_pipe):
    plain = FluxFillPipeline(**flux_pipe.components)
    plain.set_progress_bar_config(disable=True)
    expected = _run(plain)
    np.testing.assert_array_equal(
        _run(flux_pipe, center_prompt="a cat", surrounding_prompt="the sea", region_strength=0.0), expected
    )
    np.testing.assert_array_equal(_run(flux_pipe), expected)
    # the mask path itself is continuous at 0: a vanishing strength through the mask gives the plain result
    near_zero = _run(flux_pipe, center_prompt="a cat", surrounding_prompt="the sea", region_strength=1e-7)
    np.testing.assert_allclose(near_zero, expected, atol=1e-5)


def test_region_prompts_change_the_result_and_pooled_is_the_totals(flux_pipe, monkeypatch):
    total_only = _run(flux_pipe)
    regions = _run(flux_pipe, center_prompt="a red barn", surrounding_prompt="snowy mountains", region_strength=1.0)
    assert np.abs(regions - total_only).max() > 1e-5
    seen = _spy_on_flux_fill_calls(monkeypatch)
    _run(flux_pipe, center_prompt="a cat", surrounding_prompt="the sea", region_strength=1.0)
    _, pooled, _ = flux_pipe.encode_prompt(prompt=TOTAL, prompt_2=None, max_sequence_length=TEXT)
    torch.testing.assert_close(seen["pooled_prompt_embeds"], pooled)
    assert seen["prompt_embeds"].shape[1] == 3 * TEXT


def test_adapters_negative_prompts_and_schedulers_are_refused_clearly(flux_pipe):
    with pytest.raises(OptionError, match="trained for UNet models"):
        flux_pipe.region_controller(adapter=object())
    with pytest.raises(ValueError, match="negative_prompt"):
        _run(flux_pipe, negative_prompt="blurry")
    with pytest.raises(OptionError, match="use flow-match"):
        flux_pipe.set_scheduler("dpm++")


def test_vip_outpaint_runs_flux_fill_end_to_end(vip_main, flux_dir, tmp_path):
    source = random_photo(tmp_path / "photo.png")
    out = tmp_path / "out.png"
    result = outpaint_regions(vip_main, source, flux_dir, out)
    assert result.returncode == 0, result.stderr[-3000:]
    written = pixels(out)
    assert written.shape == (72, 96, 3)
    np.testing.assert_array_equal(written[12:60, 16:80], pixels(source))
    meta = vip_metadata(out)
    assert meta["family"] == "flux-fill" and meta["cts"]["mode"] == "joint-mask"
    assert meta["guidance"] == 30.0 and meta["scheduler"] == "flow-match"  # the family's defaults where none given


def test_vip_train_on_flux_says_not_supported_in_one_line(vip_main, flux_dir, tmp_path):
    data = train_photos(tmp_path / "data")
    result = vip_main(
        "train",
        data,
        "--out",
        tmp_path / "run",
        "--model",
        flux_dir,
        "--max-steps",
        "2",
        "--resolution",
        "64",
        "--batch-size",
        "1",
        "--validate-every",
        "0",
    )
    assert result.returncode != 0
    assert "FLUX Fill training is not supported yet" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------ memory: the plan, from free GPU memory

GB = 10**9
FLUX_PARAMS = {
    "transformer": 11_901_000_000,
    "text_encoder_2": 4_762_000_000,
    "text_encoder": 123_000_000,
    "vae": 84_000_000,
}  # FLUX.1 Fill [dev]
SDXL_PARAMS = {"unet": 2_567_000_000, "text_encoder_2": 695_000_000, "text_encoder": 123_000_000, "vae": 84_000_000}
BNB = frozenset({"bitsandbytes"})


def _cuda_plan(free_gb: float, params: dict, denoiser: str, quantizable: bool, installed, requested: str):
    from vipcli_model.models.memory import plan_memory

    return plan_memory(
        device_type="cuda",
        free_bytes=int(free_gb * GB),
        params=params,
        denoiser=denoiser,
        itemsize=2,
        requested=requested,
        quantizable=quantizable,
        installed=installed,
    )


def _flux_plan(free_gb: float, installed=BNB, requested: str = "auto"):
    return _cuda_plan(free_gb, FLUX_PARAMS, "transformer", True, installed, requested)


def test_memory_plan_for_flux_at_80_24_and_12_gb():
    assert (_flux_plan(79).mode, _flux_plan(79).quantize) == ("full", None)  # an 80 GB card
    # a 24 GB card (24 GiB, ~25.3 GB free): the bf16 transformer alone + activations does not fit
    assert (_flux_plan(25.3).mode, _flux_plan(25.3).quantize) == ("model-offload", "8bit")
    # a 12 GB card: a 4-bit transformer, and the bf16 T5 encoder fits alone
    assert (_flux_plan(12.4).mode, _flux_plan(12.4).quantize) == ("model-offload", "4bit")
    # without bitsandbytes: lossless block offload, and the reason says what to install
    without = _flux_plan(25.3, installed=frozenset())
    assert (without.mode, without.quantize) == ("group-offload", None) and "pip install bitsandbytes" in without.reason
    assert _flux_plan(4, installed=frozenset()).mode == "sequential-offload"
    # each plan records the figures it was made from
    plan = _flux_plan(25.3)
    assert plan.free_gb == 25.3 and plan.needed_gb is not None and plan.needed_gb <= 25.3
    assert (_flux_plan(30).mode, _flux_plan(30).quantize) == ("model-offload", None)  # 23.8 GB transformer + 3 GiB


def test_memory_plan_for_sdxl_never_quantizes_and_cpu_changes_nothing():
    from vipcli_model.models.memory import plan_memory

    def sdxl(free_gb: float, requested: str = "auto"):
        return _cuda_plan(free_gb, SDXL_PARAMS, "unet", False, BNB, requested)

    assert sdxl(12.4).mode == "full" and sdxl(9).mode == "model-offload" and sdxl(7).mode == "group-offload"
    with pytest.raises(OptionError, match="quantizes the FLUX transformers only"):
        sdxl(7, "8bit")
    cpu = plan_memory(device_type="cpu", free_bytes=None, params=FLUX_PARAMS, denoiser="transformer", itemsize=4)
    assert (cpu.mode, cpu.quantize, cpu.free_gb) == ("full", None, None)
    with pytest.raises(OptionError, match="needs a CUDA device"):
        plan_memory(
            device_type="cpu", free_bytes=None, params={}, denoiser="unet", itemsize=4, requested="group-offload"
        )
    with pytest.raises(OptionError, match="needs bitsandbytes: pip install bitsandbytes"):
        _flux_plan(12.4, installed=frozenset(), requested="4bit")
    assert (_flux_plan(79, requested="8bit").mode, _flux_plan(79, requested="8bit").quantize) == ("full", "8bit")
    assert _flux_plan(79, requested="group-offload").mode == "group-offload"  # asked for: taken as is
    with pytest.raises(OptionError, match="is not one of"):
        _flux_plan(79, requested="half")


def test_parameter_counts_come_from_the_folder_headers(flux_dir, flux_pipe):
    from vipcli_model.models.loading import folder_parameters

    counts = folder_parameters(flux_dir)
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        module = getattr(flux_pipe, name)
        assert counts[name] == sum(p.numel() for p in module.parameters()), name  # tied weights once
    assert flux_pipe.vip_memory_plan.mode == "full"  # loaded on the CPU: nothing changes


def test_memory_option_on_the_cli_is_checked_and_recorded(vip_main, flux_dir, astronaut_png, tmp_path):
    offload = vip_main(
        *outpaint_args(astronaut_png, flux_dir, tmp_path / "a.png", "--memory", "model-offload", "--device", "cpu")
    )
    assert offload.returncode == 2 and "--memory model-offload needs a CUDA device" in offload.stderr
    assert "Traceback" not in offload.stderr and not (tmp_path / "a.png").exists()
    wrong = vip_main(*outpaint_args(astronaut_png, flux_dir, tmp_path / "b.png", "--memory", "lots"))
    assert wrong.returncode == 2 and "--memory 'lots' is not one of: auto, full, model-offload" in wrong.stderr
    out = tmp_path / "c.png"
    full = vip_main(
        *outpaint_args(
            astronaut_png, flux_dir, out, "--steps", "1", "--memory", "full", "--prompt", "a photo", "--json"
        )
    )
    assert full.returncode == 0, full.stderr[-3000:]
    meta = read_metadata(out)["vip"]
    assert meta["memory"]["mode"] == "full" and meta["memory"]["quantize"] is None
    assert json.loads(full.stdout.splitlines()[0])["memory"]["mode"] == "full"  # --json: path + metadata


def test_fast_on_flux_says_it_has_no_fast_preset(vip_main, flux_dir, astronaut_png, tmp_path):
    result = vip_main(
        "outpaint", astronaut_png, "--model", flux_dir, "--ratio", "1.5x", "--fast", "-o", tmp_path / "f.png"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--fast: FLUX Fill has no fast preset yet" in result.stderr


def test_a_fast_lora_of_ones_own_for_flux_fill_is_fused_through_diffusers(flux_dir, tmp_path):
    """FLUX Fill has no fast preset, but `fast_lora` may name a LoRA made for it: a transformer's LoRA goes through
    diffusers' LoRA layers (the straight-in path is a UNet's), is fused, and the layers are gone."""
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from vipcli_model.models.loading import load_fast_lora

    transformer = FluxTransformer2DModel.from_pretrained(flux_dir / "transformer")
    torch.manual_seed(0)
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    lora = tmp_path / "flux-lora.safetensors"
    save_file(
        {f"transformer.{name}": value for name, value in get_peft_model_state_dict(transformer).items()}, str(lora)
    )
    pipe = load_pipeline(ModelConfig(model=str(flux_dir), device="cpu", dtype="fp32"))
    before = {name: value.clone() for name, value in pipe.transformer.state_dict().items() if "to_q.weight" in name}
    load_fast_lora(pipe, str(lora))
    after = pipe.transformer.state_dict()
    assert before and all(not torch.equal(value, after[name]) for name, value in before.items())
    assert not any("lora" in name for name, _ in pipe.transformer.named_modules())


def test_vip_eval_runs_on_flux_fill_end_to_end(flux_dir, tmp_path):
    from test_sdxl import check_family_eval, run_family_eval

    meta = check_family_eval(*run_family_eval(flux_dir, tmp_path), "flux-fill")
    assert (meta["guidance"], meta["scheduler"]) == (30.0, "flow-match")  # the family's, not SD's 7.5 / dpm++
    assert meta["cts"]["mode"] == "joint-mask"


def test_region_streams_carry_no_512_tokens_of_padding(flux_pipe, monkeypatch):
    """The Total keeps FLUX's 512 T5 tokens; Center and Surrounding get what their longer text needs, rounded up
    to 64."""
    seen = _spy_on_flux_fill_calls(monkeypatch)
    image, mask = quarters_to_generate(32)

    def run(surrounding: str) -> tuple[int, tuple]:
        flux_pipe(
            prompt=TOTAL,
            image=image,
            mask_image=mask,
            height=32,
            width=32,
            num_inference_steps=1,
            center_prompt="a red barn",
            surrounding_prompt=surrounding,
            region_strength=1.0,
            output_type="np",
        )
        return seen["prompt_embeds"].shape[1], tuple(seen["joint_attention_kwargs"]["attention_mask"].shape)

    image_tokens = (32 // 2) ** 2
    assert run("snowy mountains") == (512 + 2 * 64, (1, 1, 640 + image_tokens, 640 + image_tokens))
    long_text = " ".join(["snowy mountains under a pale winter sky"] * 4)  # ~130 tokens here: never truncated
    tokens = len(flux_pipe.tokenizer_2(long_text).input_ids)
    length, _ = run(long_text)
    assert 64 < tokens <= (length - 512) // 2 < tokens + 64


def test_joint_mask_with_shorter_region_streams():
    bias = joint_attention_bias(
        torch.tensor([0.0, 1.0]),
        text_length=3,
        strength=1.0,
        dtype=torch.float32,
        device=torch.device("cpu"),
        region_length=1,
    )[0, 0]
    assert bias.shape == (3 + 2 + 2, 3 + 2 + 2)
    known, generate = 5, 6
    assert bias[known, 3] == 0 and torch.isinf(bias[known, 4])  # the Center token, not the Surrounding one
    assert bias[generate, 4] == 0 and torch.isinf(bias[generate, 3])
    assert torch.isinf(bias[known, :3]).all()  # strength 1: the Total text is not seen


def test_library_outpaint_takes_the_familys_values_for_what_is_unset(flux_dir):
    """A library user sets only `steps`: the scheduler and guidance are FLUX Fill's own, not SD's dpm++ / 7.5."""
    from vipcli_model.config import ExpansionConfig, GenerationConfig
    from vipcli_model.outpainting.outpainter import Outpainter
    from vipcli_model.prompts import RegionPrompts

    image, _ = quarters_to_generate(32)
    result = Outpainter(ModelConfig(model=str(flux_dir), device="cpu")).outpaint(
        image,
        RegionPrompts.build(center="a red barn", surrounding="a green field"),
        expansion=ExpansionConfig(ratio="1.5x"),
        generation=GenerationConfig(steps=1, seed=0),
    )
    meta = result.metadata
    assert (meta["steps"], meta["scheduler"], meta["guidance"]) == (1, "flow-match", 30.0)


def test_captioner_text_is_fitted_to_the_t5_window_not_clips(flux_dir, astronaut_png, tmp_path, monkeypatch):
    """FLUX Fill's region prompts ride its T5 stream (512 tokens): a captioner's text longer than CLIP's 77 tokens
    is kept whole."""
    from vipcli_model.captioning import captioner as captioning
    from vipcli_model.captioning.text import count_tokens
    from vipcli_model.config import ExpansionConfig, GenerationConfig
    from vipcli_model.outpainting.outpainter import Outpainter
    from vipcli_model.outpainting.run import OutpaintJob, outpaint_images

    answer = " ".join(["A weathered red barn stands in a wide green field under a pale sky."] * 3)

    class Describer:
        name = "stand-in-vlm"

        def generate(self, image, instruction, *, max_new_tokens):
            return answer

    monkeypatch.setattr(captioning, "load_captioner", lambda *args, **kwargs: Describer())
    outpainter = Outpainter(ModelConfig(model=str(flux_dir), device="cpu"))
    tokens = count_tokens(answer, outpainter.pipe.tokenizer_2)
    assert 77 < tokens and 2 * tokens + 10 < 512  # longer than CLIP's window; the Total fits T5's
    job = OutpaintJob(
        expansion=ExpansionConfig(ratio="1.25x"),
        generation=GenerationConfig(steps=1, seed=0),
        model=ModelConfig(model=str(flux_dir), device="cpu"),
        output=tmp_path / "out.png",
    )
    (item,) = outpaint_images([astronaut_png], job, outpainter=outpainter).items
    assert item.status == "written", item.error
    meta = item.written[0].metadata
    assert meta["prompts"]["center"] == answer and meta["prompt_source"]["truncated"] == []
    assert not any("cut to fit" in note for note in item.notes)
    assert outpainter.prompt_window() == (outpainter.pipe.tokenizer_2, 512)
