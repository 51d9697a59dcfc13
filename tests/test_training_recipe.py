"""The training recipe on tiny real components: it learns, trains only what it should, resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vipcli_model.errors import OptionError
from vipcli_model.training.config import TrainConfig, check_config
from vipcli_model.training.recipe import TrainingRecipe, run_training

RESOLUTION = 64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a small shared machine: one thread is faster than two fighting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        # smooth images (VAE latents of pure noise are not a useful target)
        base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(base).resize((80, 72), Image.Resampling.BILINEAR).save(folder / f"img{index}.png")
    (folder / "captions.jsonl").write_text(
        json.dumps({"image": "img0.png", "center": "a red barn", "surrounding": "snowy field"}) + "\n"
    )
    return folder


def tiny_config(data_dir: Path, model: Path, **overrides) -> TrainConfig:
    settings = dict(
        data_dir=str(data_dir),
        model=str(model),
        resolution=RESOLUTION,
        batch_size=2,
        rank=4,
        max_steps=4,
        warmup_steps=0,
        save_every=0,
        validate_every=0,
        lr=1e-2,
        gate_lr=1e-1,
        seed=0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def fresh_components(model: Path) -> dict[str, dict[str, torch.Tensor]]:
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(model)
    return {name: getattr(pipe, name).state_dict() for name in ("unet", "vae", "text_encoder")}


def test_loss_on_a_fixed_batch_falls(tiny_model_dir, data_dir, tmp_path):
    """Overfit: same batch, same noise and timesteps every step; the whole UNet trains (mode full)."""
    recipe = TrainingRecipe(
        tiny_config(data_dir, tiny_model_dir, mode="full", unet_lr=1e-3, lr=1e-3, prompt_dropout=0.0), tmp_path / "run"
    )
    recipe.setup()
    try:
        batch = next(recipe.batches)
        losses = []
        for _ in range(30):
            loss = recipe.loss_step(batch, torch.Generator().manual_seed(0))
            recipe.accelerator.backward(loss)
            recipe.optimizer.step()
            recipe.optimizer.zero_grad()
            losses.append(loss.item())
    finally:
        recipe.cleanup()
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses


def test_adapter_mode_trains_only_the_adapter(tiny_model_dir, data_dir, tmp_path):
    recipe = TrainingRecipe(tiny_config(data_dir, tiny_model_dir, max_steps=5), tmp_path / "run")
    recipe.setup()
    initial = {name: p.detach().clone() for name, p in recipe.trainable.items()}
    assert set(initial) == {f"adapter.{name}" for name, _ in recipe.adapter.named_parameters()}
    assert not any(p.requires_grad for m in (recipe.unet, recipe.vae, recipe.text_encoder) for p in m.parameters())
    try:
        batch = next(recipe.batches)
        first = recipe.loss_step(batch, torch.Generator().manual_seed(1)).item()
        recipe.optimizer.zero_grad()
        recipe.train()
        after = recipe.loss_step(batch, torch.Generator().manual_seed(1)).item()
        trained = {
            "unet": recipe.unet.state_dict(),
            "vae": recipe.vae.state_dict(),
            "text_encoder": recipe.text_encoder.state_dict(),
        }
    finally:
        recipe.cleanup()
    for component, state in fresh_components(tiny_model_dir).items():
        assert state.keys() == trained[component].keys()
        for key, tensor in state.items():
            assert torch.equal(tensor, trained[component][key]), f"{component}.{key} changed"
    changed = [name for name, tensor in initial.items() if not torch.equal(tensor, recipe.trainable[name].detach())]
    assert "adapter.gate_logits" in changed and any(".up." in name for name in changed)
    assert after != first  # the adapter changes what the UNet predicts
    # cleanup restored the UNet's own attention processors
    assert not any(type(p).__name__ == "CTSAttnProcessor" for p in recipe.unet.attn_processors.values())


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_exactly(tiny_model_dir, data_dir, tmp_path):
    """Stop right after the step-3 checkpoint, resume: the same weights as a run that never stopped."""
    config = tiny_config(data_dir, tiny_model_dir, max_steps=6, save_every=3, warmup_steps=2, ema=True, grad_accum=2)
    straight = run_training(config, tmp_path / "straight")

    def stop_after_checkpoint(event):
        if event.kind == "checkpoint" and event.step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(config, tmp_path / "resumed", on_event=stop_after_checkpoint)
    resumed = run_training(config, tmp_path / "resumed", resume=True)
    assert resumed.step == straight.step == 6 and resumed.resumed_from.name == "step_3"
    expected, found = load_file(straight.adapter_path), load_file(resumed.adapter_path)
    assert expected.keys() == found.keys()
    for key in expected:
        assert torch.equal(expected[key], found[key]), key
    metrics = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in metrics] == [1, 2, 3, 4, 5, 6]


def test_ema_weights_are_the_result(tiny_model_dir, data_dir, tmp_path):
    result = run_training(tiny_config(data_dir, tiny_model_dir, max_steps=3, ema=True, ema_decay=0.9), tmp_path / "run")
    saved = load_file(result.adapter_path)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_3"
    live, ema = load_file(checkpoint / "trainable.safetensors"), load_file(checkpoint / "ema.safetensors")
    assert torch.equal(saved["gate_logits"], ema["adapter.gate_logits"])
    assert not torch.equal(saved["gate_logits"], live["adapter.gate_logits"])


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_unet_modes_save_a_model_folder_that_outpaint_loads(mode, tiny_model_dir, data_dir, tmp_path):
    from vipcli_model.config import ModelConfig
    from vipcli_model.cts.attention import adapter_metadata
    from vipcli_model.outpainting.outpainter import Outpainter

    result = run_training(tiny_config(data_dir, tiny_model_dir, mode=mode, max_steps=2, unet_lr=1e-2), tmp_path / "run")
    assert result.model_path == tmp_path / "run" / "model" and (result.model_path / "model_index.json").is_file()
    if mode == "lora":
        assert (result.lora_path / "pytorch_lora_weights.safetensors").is_file()
    outpainter = Outpainter(ModelConfig(model=str(result.model_path), adapter=str(result.adapter_path), device="cpu"))
    assert outpainter.adapter is not None and adapter_metadata(result.adapter_path)["base_model"] == str(
        result.model_path
    )
    base = fresh_components(tiny_model_dir)["unet"]
    trained = outpainter.pipe.unet.state_dict()
    assert base.keys() == trained.keys()  # LoRA merged in: a plain UNet
    assert any(not torch.equal(base[key], trained[key]) for key in base)


def test_min_snr_weights_keep_noisy_steps_and_damp_clean_ones():
    from diffusers import DDPMScheduler

    from vipcli_model.training.recipe import min_snr_weights

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    timesteps = torch.tensor([0, 50, 200, 500, 999])
    weights = min_snr_weights(scheduler, timesteps, 5.0, v_prediction=False)
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    assert torch.allclose(weights, torch.clamp(snr, max=5.0) / snr)
    assert weights[-1] == 1.0 and weights[0] < 0.01  # pure noise counts fully, nearly clean hardly
    assert torch.all(weights[1:] >= weights[:-1])  # monotone in the noise level
    v_weights = min_snr_weights(scheduler, timesteps, 5.0, v_prediction=True)
    assert torch.all(v_weights < 1) and torch.allclose(v_weights, torch.clamp(snr, max=5.0) / (snr + 1))
    with pytest.raises(OptionError, match="snr_gamma -1.0 must be >= 0"):
        check_config(TrainConfig(data_dir="x", snr_gamma=-1.0))


def test_gate_report_flags_gates_that_close():
    from vipcli_model.training.gates import gate_report

    blocks = ["a", "b", "c", "d"]
    steady = gate_report(blocks, [0.5, 0.45, 0.6, 0.3], initial=0.5, step=10)
    assert not steady["closing"] and steady["closed"] == [] and steady["mean"] == pytest.approx(0.4625)
    assert gate_report(blocks, [0.2, 0.2, 0.2, 0.3], initial=0.5, step=10)["closing"]  # mean 0.225 < 0.25
    one_shut = gate_report(blocks, [0.05, 0.6, 0.6, 0.6], initial=0.5, step=10)  # a quarter of the blocks
    assert one_shut["closing"] and one_shut["closed"] == ["a"]
    # a run that starts with weak gates on purpose is not "closing" for staying weak
    assert not gate_report(blocks, [0.05, 0.05, 0.06, 0.05], initial=0.05, step=10)["closing"]


def test_run_writes_the_learned_gates_and_warns_when_they_close(tiny_model_dir, data_dir, tmp_path):
    events = []
    recipe = TrainingRecipe(
        tiny_config(data_dir, tiny_model_dir, max_steps=2), tmp_path / "run", on_event=events.append
    )
    recipe.setup()
    try:
        recipe.train()
        recipe.save_result()
        report = json.loads((tmp_path / "run" / "gates.json").read_text())
        gates = recipe.adapter.gates().detach().tolist()
        assert list(report["blocks"]) == recipe.adapter.block_names
        assert list(report["blocks"].values()) == pytest.approx(gates, abs=1e-6)
        assert report["step"] == 2 and report["initial"] == 0.5 and not report["closing"]
        assert not [e for e in events if e.kind == "note" and "gates" in e.message]
        with torch.no_grad():  # as if training had closed them
            recipe.adapter.gate_logits.fill_(-4.0)
        recipe.report_gates()
    finally:
        recipe.cleanup()
    report = json.loads((tmp_path / "run" / "gates.json").read_text())
    assert report["closing"] and len(report["closed"]) == len(report["blocks"])
    notes = [e.message for e in events if e.kind == "note" and "gates" in e.message]
    assert len(notes) == 1 and "`gate_lr`" in notes[0] and "mean 0.02" in notes[0]


def test_region_weighted_mean_counts_the_generated_region():
    from vipcli_model.training.denoiser import region_weighted_mean

    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :, 2:] = 1  # right half generated
    errors = torch.zeros(2, 3, 4, 4)
    errors[:, :, :, :2] = 100.0  # large errors only where the pixels are known
    errors[1, :, :, 2:] = 1.0
    assert region_weighted_mean(errors, mask, 0.0).tolist() == [0.0, 1.0]  # known latents ignored
    assert torch.allclose(region_weighted_mean(errors, mask, 1.0), errors.mean(dim=(1, 2, 3)))  # the plain mean
    half = region_weighted_mean(errors, mask, 0.5)  # weights 1 and 0.5 over equal halves: (0.5 * 100 + e) / 1.5
    assert torch.allclose(half, torch.tensor([50.0 / 1.5, 51.0 / 1.5]))
    with pytest.raises(OptionError, match="known_loss_weight 2.0 must be in"):
        check_config(TrainConfig(data_dir="x", known_loss_weight=2.0))


def test_gate_lr_zero_keeps_the_gates_at_the_zero_shot_strength(tiny_model_dir, data_dir, tmp_path):
    recipe = TrainingRecipe(
        tiny_config(data_dir, tiny_model_dir, max_steps=3, gate_lr=0.0, known_loss_weight=0.0), tmp_path / "run"
    )
    recipe.setup()
    try:
        before = {name: p.detach().clone() for name, p in recipe.trainable.items()}
        recipe.train()
        gates = recipe.adapter.gates().detach()
        changed = [name for name, p in recipe.trainable.items() if not torch.equal(before[name], p.detach())]
    finally:
        recipe.cleanup()
    assert torch.allclose(gates, torch.full_like(gates, 0.5))
    assert "adapter.gate_logits" not in changed and any(".up." in name for name in changed)  # the deltas did learn
