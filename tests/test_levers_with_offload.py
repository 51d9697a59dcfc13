"""Every speed lever with every memory plan a CPU can run: the same images as without the plan, and the plan's hooks
(diffusers' group offload and layerwise casting, accelerate's offload hooks) still in place after the call.

Plans a CPU cannot run, so not here: group offload with CUDA streams (``use_stream``: prefetching on a side stream),
the 8-bit / 4-bit plans (bitsandbytes quantization needs a CUDA device), and sequential offload (accelerate fails to
put the weights back on a CPU execution device: a TypeError even without any lever).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.hooks import apply_group_offloading
from diffusers.hooks.group_offloading import ModuleGroup
from PIL import Image
from tiny_models import build_tiny_inpaint_components

from vipcli_model.pipelines.sd import VipOutpaintPipeline

CPU = torch.device("cpu")
STEPS = 4
# DDIM over 4 steps of the tiny model's schedule: timesteps 751, 501, 251, 1 (sigma 4.1, 1.6, 0.7, 0.04): the last
# step unguided, and with ``deep_cache=2`` the second step cached
INTERVAL = (0.5, 5.0)

LEVERS = {
    "guidance-interval": {"guidance_interval": INTERVAL},
    "deep-cache": {"deep_cache": 2},
    "region-prompts": {"center_prompt": "a red barn", "surrounding_prompt": "snowy field", "region_strength": 0.7},
}


def _group_offload(offload_type: str):
    def apply(pipe: VipOutpaintPipeline) -> None:
        apply_group_offloading(pipe.unet, onload_device=CPU, offload_type=offload_type, num_blocks_per_group=1)

    return apply


def _layerwise_casting(pipe: VipOutpaintPipeline) -> None:
    pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)


PLANS = {
    "none": lambda pipe: None,
    "group-offload-block": _group_offload("block_level"),
    "group-offload-leaf": _group_offload("leaf_level"),
    "layerwise-casting": _layerwise_casting,
    # accelerate's hooks: on a CPU they move nothing, but they wrap forward as on a GPU
    "model-offload": lambda pipe: pipe.enable_model_cpu_offload(device="cpu"),
}


def _pipe(plan: str = "none", rounded_to_fp8: set[str] = frozenset()) -> VipOutpaintPipeline:
    components = build_tiny_inpaint_components(seed=0)
    with torch.no_grad():  # the reference of layerwise casting: the same weights, stored as fp8 would store them
        for name, parameter in components["unet"].named_parameters():
            if name in rounded_to_fp8:
                parameter.copy_(parameter.to(torch.float8_e4m3fn).float())
    pipe = VipOutpaintPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    PLANS[plan](pipe)
    return pipe


def _run(pipe: VipOutpaintPipeline, **lever):
    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(64, 64, 3) * 255).astype("uint8"))
    mask = Image.new("L", (64, 64), 255)
    mask.paste(0, (16, 16, 48, 48))
    return pipe(
        prompt="a barn in the snow",
        image=image,
        mask_image=mask,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **lever,
    )


def _instance_forwards(pipe: VipOutpaintPipeline) -> dict[str, object]:
    """Every UNet module's instance-level ``forward`` (what offload hooks install; accelerate's are made anew at each
    call, so by the function they wrap) and the names of its diffusers hooks, by module name."""
    found = {}
    for name, module in pipe.unet.named_modules():
        forward = module.__dict__.get("forward")
        if forward is not None:
            found[name] = getattr(getattr(forward, "func", forward), "__qualname__", forward)
        if hasattr(module, "_diffusers_hook"):
            found[name + " hooks"] = list(module._diffusers_hook.hooks)
    return found


def _onloaded_groups(pipe: VipOutpaintPipeline, monkeypatch) -> list[str]:
    """The offload groups a plain UNet pass onloads, by their first module: the group-offload hooks that still run."""
    names = {id(module): name for name, module in pipe.unet.named_modules()}
    onloaded = []
    original = ModuleGroup.onload_
    monkeypatch.setattr(
        ModuleGroup, "onload_", lambda group: onloaded.append(names[id(group.onload_leader)]) or original(group)
    )
    with torch.no_grad():
        pipe.unet(torch.randn(2, 9, 32, 32), 10, encoder_hidden_states=torch.randn(2, 77, 32))
    monkeypatch.setattr(ModuleGroup, "onload_", original)
    return onloaded


def test_deep_cache_and_guidance_interval_keep_group_offload(monkeypatch):
    """After a call with both levers, every block's group-offload hook still runs, and the images are those of the
    same call without offloading."""
    lever = {"deep_cache": 2, "guidance_interval": INTERVAL}
    expected = _run(_pipe(), **lever)
    pipe = _pipe("group-offload-block")
    hooked = _instance_forwards(pipe)
    groups = _onloaded_groups(pipe, monkeypatch)
    assert len(groups) == len(pipe.unet.down_blocks) + len(pipe.unet.up_blocks) + 1  # the blocks, and the rest
    output = _run(pipe, **lever)
    assert output.cached_steps["cached"] > 0 and output.guided_steps["unguided"] > 0
    np.testing.assert_array_equal(output.images, expected.images)
    blocks = [*pipe.unet.down_blocks, *pipe.unet.up_blocks]
    assert all(block._diffusers_hook.get_hook("group_offloading") is not None for block in blocks)
    assert _instance_forwards(pipe) == hooked
    assert _onloaded_groups(pipe, monkeypatch) == groups


@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.parametrize("lever", list(LEVERS))
def test_each_lever_runs_with_each_memory_plan(lever, plan):
    pipe = _pipe(plan)
    fp8 = {name for name, parameter in pipe.unet.named_parameters() if parameter.dtype == torch.float8_e4m3fn}
    assert bool(fp8) == (plan == "layerwise-casting")
    expected = _run(_pipe(rounded_to_fp8=fp8), **LEVERS[lever])
    hooked = _instance_forwards(pipe)
    output = _run(pipe, **LEVERS[lever])
    np.testing.assert_array_equal(output.images, expected.images)
    # the lever really ran, and the plan's hooks are where they were
    ran = {
        "guidance-interval": output.guided_steps["unguided"] == 1,
        "deep-cache": output.cached_steps["cached"] == 2,
        "region-prompts": output.cts["enabled"] and "note" not in output.cts,
    }
    assert ran[lever]
    assert _instance_forwards(pipe) == hooked
    assert {name for name, parameter in pipe.unet.named_parameters() if parameter.dtype == torch.float8_e4m3fn} == fp8


@pytest.mark.parametrize("lever", list(LEVERS))
def test_no_lever_leaves_a_forward_on_any_module(lever):
    """Without a memory plan no module has an instance-level ``forward`` or a hook registry after a call."""
    pipe = _pipe()
    _run(pipe, **LEVERS[lever])
    modules = [module for component in (pipe.unet, pipe.vae, pipe.text_encoder) for module in component.modules()]
    assert not [module for module in modules if "forward" in module.__dict__]
    assert not [module for module in modules if hasattr(module, "_diffusers_hook")]


def test_compiled_unet_keeps_its_hooks_and_its_images(tiny_model_dir, monkeypatch):
    """``compile`` assigns no forward: the memory plan's hooks stay, and the levers give the eager images."""
    import torch._dynamo

    from vipcli_model.config import ModelConfig
    from vipcli_model.outpainting import outpainter

    monkeypatch.setitem(outpainter.COMPILE_OPTIONS, "backend", "eager")  # dynamo's tracing, no code generation
    torch._dynamo.reset()
    try:
        compiled = outpainter.Outpainter(ModelConfig(model=str(tiny_model_dir), compile=True))
        assert "forward" not in compiled.denoiser.__dict__
        lever = {**LEVERS["region-prompts"], "deep_cache": 2, "guidance_interval": INTERVAL}
        expected = _run(_pipe(), **lever)
        pipe = _pipe("group-offload-block")
        hooked = _instance_forwards(pipe)
        pipe.unet.compile(**outpainter.COMPILE_OPTIONS)
        output = _run(pipe, **lever)
        np.testing.assert_array_equal(output.images, expected.images)
        assert output.cached_steps["cached"] == 1 and _instance_forwards(pipe) == hooked
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("lever", [{"guidance_interval": INTERVAL}, {"deep_cache": 2}])
def test_flux_fill_refuses_the_unet_levers_by_name(lever):
    from tiny_models import build_tiny_flux_fill_components

    from vipcli_model.pipelines.flux import VipOutpaintFluxFillPipeline

    pipe = VipOutpaintFluxFillPipeline(**build_tiny_flux_fill_components(seed=0))
    image, mask = Image.new("RGB", (32, 32)), Image.new("L", (32, 32), 255)
    with pytest.raises(ValueError, match=f"`{next(iter(lever))}`"):
        pipe(prompt="a barn", image=image, mask_image=mask, num_inference_steps=1, **lever)
