"""vip's pipelines are called like their diffusers parents: the same parameters, defaults, inputs and outputs, with
the region keywords on top. Without a region prompt a vip pipeline gives the parent's images exactly."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import FluxFillPipeline, StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline
from diffusers.utils import BaseOutput
from family_runs import quarters_to_generate
from tiny_models import (
    build_tiny_flux_fill_components,
    build_tiny_inpaint_components,
    build_tiny_sdxl_inpaint_components,
)

from vipcli_model.pipelines.flux import VipOutpaintFluxFillPipeline
from vipcli_model.pipelines.sd import VipOutpaintPipeline
from vipcli_model.pipelines.sdxl import VipOutpaintXLPipeline

FAMILIES = {
    "sd": (VipOutpaintPipeline, StableDiffusionInpaintPipeline, build_tiny_inpaint_components, 64),
    "sdxl": (VipOutpaintXLPipeline, StableDiffusionXLInpaintPipeline, build_tiny_sdxl_inpaint_components, 64),
    "flux": (VipOutpaintFluxFillPipeline, FluxFillPipeline, build_tiny_flux_fill_components, 32),
}
REGION_KEYWORDS = {
    "center_prompt",
    "surrounding_prompt",
    "center_prompt_embeds",
    "surrounding_prompt_embeds",
    "region_strength",
    "cts",
    "guidance_interval",
    "deep_cache",
}
_PIPES: dict[str, tuple] = {}


def _pipes(family: str):
    """The vip pipeline and its parent over the same components (built once per family)."""
    if family not in _PIPES:
        vip_class, parent_class, build, _ = FAMILIES[family]
        components = build()
        for component in components.values():  # built in code, not loaded: dropout (the tiny T5's) would be on
            if isinstance(component, torch.nn.Module):
                component.eval()
        extra = {"requires_safety_checker": False} if family == "sd" else {}
        pipes = vip_class(**components, **extra), parent_class(**components, **extra)
        for pipe in pipes:
            pipe.set_progress_bar_config(disable=True)
        _PIPES[family] = pipes
    return _PIPES[family]


def _common(family: str) -> dict:
    size = FAMILIES[family][3]
    image, mask = quarters_to_generate(size)
    common = dict(image=image, mask_image=mask, height=size, width=size, num_inference_steps=2, output_type="np")
    if family == "flux":
        common["max_sequence_length"] = 16  # the tiny T5's; FLUX's own default is 512
    else:
        common["strength"] = 1.0  # SDXL's default (0.9999) would run one step of two
    return common


def _seeded(count: int = 1) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in range(count)]


def _embeddings(pipe, family: str, text: str) -> dict:
    """The parent's embedding keywords for ``text`` (one prompt), as its own ``encode_prompt`` makes them."""
    if family == "sd":
        positive, negative = pipe.encode_prompt(text, "cpu", 1, True, "")
        return {"prompt_embeds": positive, "negative_prompt_embeds": negative}
    if family == "sdxl":
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        return dict(zip(names, pipe.encode_prompt(prompt=text, device="cpu", num_images_per_prompt=1)))
    positive, pooled, _ = pipe.encode_prompt(prompt=text, prompt_2=None, device="cpu", max_sequence_length=16)
    return {"prompt_embeds": positive, "pooled_prompt_embeds": pooled}


# ---------------------------------------------------------------- the declared interface


@pytest.mark.parametrize("family", FAMILIES)
def test_signature_lists_every_parent_parameter_with_its_default_and_the_region_keywords(family):
    vip_class, parent_class, _, _ = FAMILIES[family]
    ours = inspect.signature(vip_class.__call__).parameters
    for name, parameter in inspect.signature(parent_class.__call__).parameters.items():
        assert name in ours, name
        assert ours[name].default == parameter.default and ours[name].kind == parameter.kind, name
    assert REGION_KEYWORDS <= set(ours)
    if family == "sdxl":
        assert ours["strength"].default == 0.9999  # the parent's


@pytest.mark.parametrize("family", FAMILIES)
def test_output_is_the_parents_class_indexable_with_how_cts_ran(family):
    vip, parent = _pipes(family)
    common = _common(family)
    output = vip(
        prompt="a barn",
        center_prompt="a red barn",
        surrounding_prompt="the sea",
        region_strength=0.5,
        generator=_seeded(),
        **common,
    )
    expected_class = type(parent(prompt="a barn", generator=_seeded(), **common))
    assert isinstance(output, expected_class) and isinstance(output, BaseOutput)
    assert output[0] is output.images and output["images"] is output.images
    assert output.cts["enabled"] and output.cts["gates"]
    as_tuple = vip(prompt="a barn", generator=_seeded(), return_dict=False, **common)
    parent_tuple = parent(prompt="a barn", generator=_seeded(), return_dict=False, **common)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(parent_tuple)
    np.testing.assert_array_equal(as_tuple[0], parent_tuple[0])


# ---------------------------------------------------------------- no region prompt: the parent, exactly


def _variants(family: str) -> dict[str, dict]:
    size = FAMILIES[family][3]
    generator_count = 4
    variants = {
        "list prompts, 2 images each": dict(prompt=["a barn", "a field"], num_images_per_prompt=2),
        "tensor image and mask": dict(
            prompt="a barn",
            image=torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)),
            mask_image=(torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(2)) > 0.5).float(),
        ),
        "numpy image": dict(
            prompt="a barn", image=np.asarray(quarters_to_generate(size)[0], dtype=np.float32)[None] / 255
        ),
        "embeddings": _embeddings(_pipes(family)[1], family, "a barn"),
        "default size": dict(prompt="a barn", height=None, width=None),
        "size other than the image's": dict(prompt="a barn", height=size // 2, width=size + size // 2),
        "callback tensors": dict(
            prompt="a barn",
            callback_on_step_end=lambda pipe, step, t, tensors: tensors,
            callback_on_step_end_tensor_inputs=["latents"],
        ),
    }
    if family != "sd":
        variants["prompt_2"] = dict(prompt="a barn", prompt_2="a red barn")
    if family == "flux":
        variants["sizes rounded down"] = dict(prompt="a barn", height=31, width=29)
    else:
        variants["negative prompts, a list"] = dict(prompt=["a barn", "a field"], negative_prompt=["blurry", "dark"])
    return {name: dict(generator=_seeded(generator_count), **kwargs) for name, kwargs in variants.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_without_region_prompts_the_images_are_the_parents_exactly(family):
    vip, parent = _pipes(family)
    for name, kwargs in _variants(family).items():
        count = 2 * kwargs.get("num_images_per_prompt", 1) if isinstance(kwargs.get("prompt"), list) else 1
        inputs = {**_common(family), **kwargs}
        inputs["generator"] = _seeded(count)
        expected = parent(**inputs).images
        inputs["generator"] = _seeded(count)
        ours = vip(**inputs)
        assert ours.images.shape == expected.shape, name
        np.testing.assert_array_equal(ours.images, expected, err_msg=name)
        assert ours.cts == {"enabled": False}


# ---------------------------------------------------------------- region prompts follow the same conventions


@pytest.mark.parametrize("family", FAMILIES)
def test_region_embeddings_give_the_images_of_the_region_texts(family):
    vip, _ = _pipes(family)
    common = _common(family)
    regions = dict(region_strength=0.7)
    output = vip(
        prompt="a barn",
        center_prompt="a red barn",
        surrounding_prompt="snowy mountains",
        generator=_seeded(),
        **regions,
        **common,
    )
    from_text = output.images
    center = _embeddings(vip, family, "a red barn")["prompt_embeds"]
    surrounding = _embeddings(vip, family, "snowy mountains")["prompt_embeds"]
    from_embeddings = vip(
        **_embeddings(vip, family, "a barn"),
        center_prompt_embeds=center,
        surrounding_prompt_embeds=surrounding,
        generator=_seeded(),
        **regions,
        **common,
    ).images
    np.testing.assert_allclose(from_embeddings, from_text, atol=1e-6)
    assert output.cts["enabled"] and "note" not in output.cts  # C-T-S ran, not skipped
    plain = vip(prompt="a barn", generator=_seeded(), **common).images
    assert np.abs(from_text - plain).max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_region_batch_equals_one_call_per_image(family):
    """2 prompts x 2 images per prompt, C-T-S on, equals 4 calls of one image with the same latents and seeds."""
    vip, _ = _pipes(family)
    common = _common(family)
    size = common["height"]
    totals, centers = ["a barn", "a field"], ["a red barn", "green grass"]
    image, mask = common.pop("image"), common.pop("mask_image")
    if family == "flux":
        tokens = (size // vip.size_multiple) ** 2  # packed: 2x2 latent pixels a token
        channels = vip.vae.config.latent_channels * 4
        latents = torch.randn(4, tokens, channels, generator=torch.Generator().manual_seed(3))
    else:
        channels, latent_size = vip.vae.config.latent_channels, size // vip.vae_scale_factor
        latents = torch.randn(4, channels, latent_size, latent_size, generator=torch.Generator().manual_seed(3))
    batch = vip(
        prompt=totals,
        center_prompt=centers,
        surrounding_prompt="snowy mountains",
        region_strength=0.8,
        image=[image] * 4,
        mask_image=mask,
        num_images_per_prompt=2,
        latents=latents,
        generator=_seeded(4),
        **common,
    )
    assert batch.cts["enabled"] and "note" not in batch.cts and len(batch.images) == 4
    for index in range(4):
        single = vip(
            prompt=totals[index // 2],
            center_prompt=centers[index // 2],
            surrounding_prompt="snowy mountains",
            region_strength=0.8,
            image=image,
            mask_image=mask,
            latents=latents[index : index + 1],
            generator=[torch.Generator().manual_seed(index)],
            **common,
        )
        np.testing.assert_allclose(batch.images[index], single.images[0], atol=1e-4, err_msg=f"image {index}")


def test_region_prompts_are_checked_like_the_parents_prompts():
    vip, _ = _pipes("sd")
    common = _common("sd")
    with pytest.raises(ValueError, match="`center_prompt` has 3 entries but the batch has 2 prompts"):
        vip(prompt=["a", "b"], center_prompt=["x", "y", "z"], **common)
    embeds = _embeddings(vip, "sd", "a red barn")["prompt_embeds"]
    with pytest.raises(ValueError, match="`center_prompt` and `center_prompt_embeds` were both given"):
        vip(prompt="a", center_prompt="x", center_prompt_embeds=embeds, **common)
    with pytest.raises(ValueError, match="`surrounding_prompt_embeds` must be a tensor with one row per prompt"):
        vip(prompt=["a", "b"], surrounding_prompt_embeds=embeds, **common)
    with pytest.raises(ValueError, match="`region_strength` must be in"):
        vip(prompt="a", center_prompt="x", region_strength=1.5, **common)
