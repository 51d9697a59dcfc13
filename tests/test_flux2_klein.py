"""The FLUX.2 [klein] family: a tiny Flux2Klein model built in code, loaded through the user's path.

C-T-S on klein's joint attention is an additive mask over [Total | Center | Surrounding | target | reference]
tokens, given to every double- and single-stream block, with each text stream's rotary positions starting at 0;
region strength 0 equals diffusers' plain Flux2KleinInpaintPipeline; hiding the reference tokens over the filler
makes the generated area independent of the filler; `vip outpaint` / `vip eval` run with the family's defaults
(4 steps, guidance off); `vip train` says in one line that klein is not trained.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pixels
from diffusers import Flux2KleinInpaintPipeline
from family_runs import outpaint_regions, quarters_to_generate, random_photo, train_photos, vip_metadata
from tiny_flux2 import save_tiny_flux2_klein_model

from vipcli_model.config import ModelConfig
from vipcli_model.errors import ModelLoadError, OptionError
from vipcli_model.models.families import family_from_configs, family_of_folder, family_of_pipeline
from vipcli_model.models.loading import load_pipeline
from vipcli_model.pipelines.flux2_klein import VipOutpaintFlux2KleinPipeline, klein_attention_bias

TOTAL = "Center: a red barn; Surrounding: a green field"
TEXT = 64  # max_sequence_length in the library-level tests (the CLI runs with klein's 512)
SIZE = 32  # pixels; the tiny model's tokens are 2x2 pixels: (32 / 2)^2 = 256 target and 256 reference tokens


@pytest.fixture(scope="module")
def klein_dir(tmp_path_factory) -> Path:
    return save_tiny_flux2_klein_model(tmp_path_factory.mktemp("tiny-flux2-klein"))


@pytest.fixture(scope="module")
def klein_pipe(klein_dir) -> VipOutpaintFlux2KleinPipeline:
    return load_pipeline(ModelConfig(model=str(klein_dir), device="cpu", dtype="fp32"))


def _run(pipe, **kwargs) -> np.ndarray:
    image, mask = quarters_to_generate(SIZE)
    output = pipe(
        prompt=kwargs.pop("prompt", TOTAL),
        image=kwargs.pop("image", image),
        mask_image=kwargs.pop("mask_image", mask),
        strength=1.0,
        num_inference_steps=1,
        guidance_scale=kwargs.pop("guidance_scale", 1.0),
        generator=kwargs.pop("generator", torch.Generator().manual_seed(0)),
        output_type="np",
        max_sequence_length=TEXT,
        **kwargs,
    )
    return np.asarray(output.images if "num_images_per_prompt" in kwargs else output.images[0])


def _plain(pipe) -> Flux2KleinInpaintPipeline:
    plain = Flux2KleinInpaintPipeline(**pipe.components, is_distilled=True)
    plain.set_progress_bar_config(disable=True)
    return plain


def test_family_from_the_configs_not_the_name(klein_dir, klein_pipe):
    assert family_of_folder(klein_dir).name == "flux2-klein"
    assert (
        isinstance(klein_pipe, VipOutpaintFlux2KleinPipeline) and family_of_pipeline(klein_pipe).name == "flux2-klein"
    )
    assert klein_pipe.size_multiple == 2  # VAE factor 1, latents packed 2x2 (the real model: 16)
    assert klein_pipe.working_resolution == 128 - 2  # the real model: 1024 - 16
    index = json.loads((klein_dir / "model_index.json").read_text())
    transformer = json.loads((klein_dir / "transformer" / "config.json").read_text())
    # FLUX.2 [dev] has the same transformer class with guidance embeddings and a Mistral encoder: not this family
    with pytest.raises(ModelLoadError, match="Flux2KleinPipeline: vip runs inpainting models"):
        family_from_configs({**index, "_class_name": "Flux2KleinPipeline"}, {**transformer, "guidance_embeds": True})


@pytest.mark.parametrize("canvas_size", [(1000, 1000), (4000, 3000), (1920, 1080), (5000, 1200), (613, 2400)])
def test_the_working_size_stays_under_the_pipelines_own_1_mp_cap(canvas_size):
    """Over 1024 x 1024 pixels the parent scales the image down itself: vip's planned size must never get there."""
    from vipcli_model.outpainting.canvas import working_size
    from vipcli_model.pipelines.flux2_klein import MAX_PIXELS

    width, height = working_size(canvas_size, 1024 - 16, 16)
    assert width * height <= MAX_PIXELS and width % 16 == 0 and height % 16 == 0
    assert width * height > 0.95 * MAX_PIXELS


def test_the_mask_routes_text_by_region_and_reference_tokens_read_the_total():
    target = torch.tensor([0.0, 1.0, 0.5])  # known, to generate, on the seam
    bias = klein_attention_bias(target, target, 2, 1, 0.6, torch.float32, torch.device("cpu"))[0, 0]
    total, center, surrounding = slice(0, 2), slice(2, 3), slice(3, 4)
    known, generate, seam = 4, 5, 6
    references, image = slice(7, 10), slice(4, 10)
    assert bias.shape == (10, 10) and torch.all(bias[image, image] == 0)  # image-image attention whole
    assert torch.allclose(bias[known, total], torch.tensor(0.4).log()) and torch.isinf(bias[known, surrounding]).all()
    assert torch.allclose(bias[known, center], torch.tensor(0.6).log())
    assert torch.allclose(bias[generate, surrounding], torch.tensor(0.6).log()) and torch.isinf(bias[generate, center])
    assert torch.allclose(bias[seam, center], torch.tensor(0.3).log())
    assert torch.allclose(bias[seam, surrounding], torch.tensor(0.3).log())
    # reference tokens: the Total only, whatever the region strength (the model reads its source image that way)
    assert torch.all(bias[references, total] == 0) and torch.isinf(bias[references, 2:4]).all()
    for block in (total, center, surrounding):  # each text stream sees itself and the image, not the other texts
        assert torch.all(bias[block, block] == 0) and torch.all(bias[block, image] == 0)
    assert torch.isinf(bias[total, center]).all() and torch.isinf(bias[center, surrounding]).all()
    hidden = klein_attention_bias(target, target, 2, 1, 0.6, torch.float32, torch.device("cpu"), hide_filler=True)[0, 0]
    assert torch.isinf(hidden[:, 8]).all()  # the reference token over the area to generate: seen by no one
    assert torch.all(hidden[:, 7] == bias[:, 7]) and torch.allclose(hidden[known, 9], torch.tensor(0.5).log())


def test_every_block_gets_the_mask_and_each_text_stream_its_own_positions(klein_pipe):
    seen, inputs = [], {}
    processors = klein_pipe.transformer.attn_processors

    class Spy:
        def __init__(self, base):
            self.base = base

        def __call__(self, *args, **kwargs):
            bound = inspect.signature(self.base.__call__).bind(*args, **kwargs)
            seen.append(bound.arguments["attention_mask"])
            return self.base(*args, **kwargs)

    def keep(module, args, kwargs):
        inputs.update(kwargs)

    klein_pipe.transformer.set_attn_processor({name: Spy(base) for name, base in processors.items()})
    hook = klein_pipe.transformer.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        _run(klein_pipe, center_prompt="a red barn", surrounding_prompt="snowy mountains", region_strength=1.0)
    finally:
        hook.remove()
        klein_pipe.transformer.set_attn_processor(processors)
    tokens = (SIZE // 2) ** 2
    assert len(seen) == 2 and all(torch.is_tensor(mask) for mask in seen)  # 1 step x (1 double + 1 single) blocks
    assert seen[0].shape[-1] == TEXT + 2 * 64 + 2 * tokens  # Total, Center, Surrounding, target, reference
    positions = inputs["txt_ids"][0, :, 3]  # the text's own rotary axis
    expected = torch.cat([torch.arange(TEXT), torch.arange(64), torch.arange(64)])
    assert torch.equal(positions.cpu(), expected)
    assert inputs["hidden_states"].shape[1] == 2 * tokens


def test_region_strength_0_equals_the_plain_klein_inpaint_pipeline(klein_pipe):
    expected = _run(_plain(klein_pipe))
    np.testing.assert_array_equal(
        _run(klein_pipe, center_prompt="a cat", surrounding_prompt="the sea", region_strength=0.0), expected
    )
    np.testing.assert_array_equal(_run(klein_pipe), expected)
    # the mask path itself is continuous at 0: a vanishing strength through the mask gives the plain result
    near_zero = _run(klein_pipe, center_prompt="a cat", surrounding_prompt="the sea", region_strength=1e-7)
    np.testing.assert_allclose(near_zero, expected, atol=1e-5)


def test_region_prompts_change_the_generated_area(klein_pipe):
    total_only = _run(klein_pipe)
    regions = _run(klein_pipe, center_prompt="a red barn", surrounding_prompt="snowy mountains", region_strength=1.0)
    generated = np.zeros((SIZE, SIZE), dtype=bool)
    generated[:, : SIZE // 4] = generated[:, -SIZE // 4 :] = True
    assert np.abs(regions - total_only)[generated].max() > 1e-5


def test_hiding_the_reference_filler_frees_the_generated_area_from_it(klein_pipe):
    """Two canvases that differ only in the filler's latents: seen through the reference tokens, the filler
    changes what is generated; hidden, the generated area does not depend on it at all.

    (Given as latents: from pixels, the autoencoder's global normalisation carries a filler into every latent of
    the canvas, known ones included, and so into the result whatever the mask; ``benchmarks/RESULTS.md``.)
    """
    image, mask = quarters_to_generate(SIZE)
    latents = klein_pipe._encode_vae_image(klein_pipe.image_processor.preprocess(image), generator=None)
    bn_std = torch.sqrt(klein_pipe.vae.bn.running_var + klein_pipe.vae.config.batch_norm_eps).view(1, -1, 1, 1)
    latents = latents * bn_std + klein_pipe.vae.bn.running_mean.view(1, -1, 1, 1)  # as the pipeline takes them
    generated = np.zeros((SIZE, SIZE), dtype=bool)
    generated[:, : SIZE // 4] = generated[:, -SIZE // 4 :] = True
    fillers = []
    for value in (-2.0, 2.0):
        filled = latents.clone()
        filled[..., :, : SIZE // 8] = value
        filled[..., :, -SIZE // 8 :] = value
        fillers.append(filled)

    def spread(**kwargs) -> float:
        runs = [_run(klein_pipe, image=filled, mask_image=mask, **kwargs) for filled in fillers]
        return float(np.abs(runs[0] - runs[1])[generated].max())

    assert spread() > 1e-3
    assert spread(hide_reference_filler=True) < 1e-6


def test_a_batch_is_each_prompt_run_alone(klein_pipe):
    regions = {"center_prompt": ["a red barn", "a cat"], "surrounding_prompt": ["snowy mountains", "the sea"]}
    batch = _run(
        klein_pipe,
        prompt=[TOTAL, "a cat by the sea"],
        generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
        num_images_per_prompt=1,
        region_strength=1.0,
        **regions,
    )
    alone = _run(
        klein_pipe,
        prompt="a cat by the sea",
        generator=torch.Generator().manual_seed(1),
        center_prompt="a cat",
        surrounding_prompt="the sea",
        region_strength=1.0,
    )
    np.testing.assert_allclose(batch[1], alone, atol=1e-5)


def test_what_klein_cannot_do_is_refused_by_name(klein_pipe):
    with pytest.raises(OptionError, match="trained for UNet models"):
        klein_pipe.region_controller(adapter=object())
    with pytest.raises(ValueError, match="negative_prompt"):
        _run(klein_pipe, negative_prompt="blurry")
    with pytest.raises(OptionError, match="use flow-match"):
        klein_pipe.set_scheduler("dpm++")
    with pytest.raises(ValueError, match="`image_reference` cannot be combined with region prompts"):
        _run(klein_pipe, image_reference=quarters_to_generate(SIZE)[0], center_prompt="a cat", region_strength=1.0)
    klein_pipe.register_to_config(is_distilled=False)  # an undistilled [klein] base model with guidance
    try:
        with pytest.raises(ValueError, match="`guidance_scale` 4.0: region prompts"):
            _run(klein_pipe, guidance_scale=4.0, center_prompt="a cat", region_strength=1.0)
    finally:
        klein_pipe.register_to_config(is_distilled=True)


def test_vip_outpaint_runs_klein_end_to_end(vip_main, klein_dir, tmp_path):
    source = random_photo(tmp_path / "photo.png", 32, 48)
    out = tmp_path / "out.png"
    result = outpaint_regions(vip_main, source, klein_dir, out, steps=1)
    assert result.returncode == 0, result.stderr[-3000:]
    written = pixels(out)
    assert written.shape == (48, 72, 3)
    np.testing.assert_array_equal(written[8:40, 12:60], pixels(source))  # the known pixels, byte-exact
    assert not np.array_equal(written[:, :12], np.zeros_like(written[:, :12]))
    meta = vip_metadata(out)
    assert meta["family"] == "flux2-klein" and meta["cts"]["mode"] == "joint-mask"
    assert meta["cts"]["region_text_tokens"] == 64  # the region streams: 64 tokens, not 512 of padding
    assert (meta["guidance"], meta["scheduler"]) == (1.0, "flow-match")  # the family's defaults where none given


def test_library_outpaint_takes_the_familys_defaults(klein_dir):
    """A library user sets nothing: 4 steps, guidance off, flow-match (not SD's 30 steps, 7.5, dpm++)."""
    from vipcli_model.config import ExpansionConfig, GenerationConfig
    from vipcli_model.models.families import resolve_generation
    from vipcli_model.models.families.flux2_klein import FAMILY

    resolved = resolve_generation(GenerationConfig(), FAMILY)
    assert (resolved.steps, resolved.guidance, resolved.scheduler) == (4, 1.0, "flow-match")
    assert ExpansionConfig(ratio="1.5x").ratio == "1.5x"


def test_vip_train_on_klein_says_not_supported_in_one_line(vip_main, klein_dir, tmp_path):
    data = train_photos(tmp_path / "data")
    result = vip_main("train", data, "--out", tmp_path / "run", "--model", klein_dir, "--max-steps", "1")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "FLUX.2 [klein] training is not supported yet" in lines[0]


def test_vip_eval_runs_on_klein_end_to_end(klein_dir, tmp_path):
    from test_sdxl import check_family_eval, run_family_eval

    meta = check_family_eval(*run_family_eval(klein_dir, tmp_path), "flux2-klein")
    assert (meta["guidance"], meta["scheduler"]) == (1.0, "flow-match")
    assert meta["cts"]["mode"] == "joint-mask"


# ------------------------------------------------------------------ memory: FLUX.2 [klein] 4B's plans

GB = 10**9
KLEIN_4B = {"transformer": 3_875_000_000, "text_encoder": 4_022_000_000, "vae": 84_000_000}  # bf16: 7.75 + 8.04 GB


@pytest.mark.parametrize(
    ("free_gb", "installed", "plan"),
    [
        (79, frozenset({"bitsandbytes"}), ("full", None)),
        (23, frozenset({"bitsandbytes"}), ("full", None)),  # a 24 GB card: ~19.2 GB
        (15, frozenset({"bitsandbytes"}), ("model-offload", None)),  # a 16 GB card: the encoder or the transformer
        (10, frozenset({"bitsandbytes"}), ("model-offload", "8bit")),  # bound by the 8 GB encoder, not the transformer
        (10, frozenset(), ("group-offload", None)),
    ],
)
def test_memory_plans_for_klein_4b(free_gb, installed, plan):
    from vipcli_model.models.memory import plan_memory

    chosen = plan_memory(
        device_type="cuda",
        free_bytes=int(free_gb * GB),
        params=KLEIN_4B,
        denoiser="transformer",
        itemsize=2,
        quantizable=True,
        installed=installed,
    )
    assert (chosen.mode, chosen.quantize) == plan
    assert chosen.needed_gb is not None and chosen.needed_gb <= free_gb
