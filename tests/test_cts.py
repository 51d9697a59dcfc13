"""C-T-S: the math of the decoupled cross-attention, on tiny real modules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from PIL import Image

from vipcli_model.cts.attention import CTSAdapter, CTSAttnProcessor, CTSController, CTSState, cross_attention_names
from vipcli_model.errors import ModelLoadError
from vipcli_model.pipelines.sd import VipOutpaintPipeline
from vipcli_model.prompts import RegionPrompts

PROMPTS = RegionPrompts.build(center="a red barn", surrounding="snowy field")


def _inputs(size: int = 64) -> tuple[Image.Image, Image.Image]:
    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8"))
    mask = Image.new("L", (size, size), 255)
    mask.paste(0, (16, 16, 48, 48))  # known center, generated border
    return image, mask


def _pipe(components) -> VipOutpaintPipeline:
    pipe = VipOutpaintPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, prompts=PROMPTS, cts=None, negative="", guidance=7.5, num_images=1) -> np.ndarray:
    image, mask = _inputs()
    out = pipe(
        prompt=prompts.total,
        image=image,
        mask_image=mask,
        center_prompt=prompts.center,
        surrounding_prompt=prompts.surrounding,
        negative_prompt=negative,
        num_inference_steps=2,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(0),
        cts=cts,
        num_images_per_prompt=num_images,
    )
    return np.stack([np.asarray(im, dtype=np.float32) for im in out.images])


# ---------------------------------------------------------------- pipeline level


def test_gate_zero_equals_plain_diffusers_inpainting(tiny_components):
    pipe = _pipe(tiny_components)
    plain = StableDiffusionInpaintPipeline(**tiny_components, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    image, mask = _inputs()
    expected = plain(
        prompt=PROMPTS.total,
        negative_prompt="",
        image=image,
        mask_image=mask,
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    ours = _run(pipe, cts=CTSController(pipe.unet, region_strength=0.0))[0] / 255.0
    assert np.allclose(ours, expected, atol=1 / 255 + 1e-6)
    # and the gate matters: a non-zero gate gives a different image
    assert not np.allclose(
        _run(pipe, cts=CTSController(pipe.unet, region_strength=1.0))[0] / 255.0, expected, atol=2 / 255
    )


def test_total_only_prompt_skips_cts_and_the_skip_is_exact(tiny_components):
    """With only --prompt, center and surrounding fall back to the total; C-T-S is then plain attention."""
    pipe = _pipe(tiny_components)
    image, mask = _inputs()
    out = pipe(
        prompt="a lighthouse",
        image=image,
        mask_image=mask,
        num_inference_steps=1,
        generator=torch.Generator().manual_seed(0),
        cts=CTSController(pipe.unet, region_strength=1.0),
    )
    assert "skipped" in out.cts["note"]
    # the skip is exact: with three identical texts the processor's output equals base attention
    attn, controller = _attention_setup(tiny_components, gate=0.8)
    hidden = torch.randn(1, 64, attn.query_dim, generator=torch.Generator().manual_seed(1))
    text = _texts(7)
    soft = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = attn(hidden, encoder_hidden_states=text)
    assert torch.allclose(_attend(attn, controller, soft, text, text, text, hidden), base, atol=1e-5)


def test_processors_are_the_unets_own_without_a_cts_call(tiny_components):
    """C-T-S is installed once, around the UNet's own processors; a call without the C-T-S entry in
    ``cross_attention_kwargs`` (a plain call, after a region call or an error in one) is the UNet's own, bit for bit."""
    pipe = _pipe(tiny_components)
    before = dict(pipe.unet.attn_processors)
    sample, text = torch.randn(1, 9, 8, 8, generator=torch.Generator().manual_seed(1)), _texts(3)
    with torch.no_grad():
        plain = pipe.unet(sample, 10, encoder_hidden_states=text).sample
    _run(pipe, cts=CTSController(pipe.unet, region_strength=0.7))
    after = pipe.unet.attn_processors
    assert all(isinstance(after[name], CTSAttnProcessor) and after[name].base is before[name] for name in before)
    controller = CTSController(pipe.unet)
    state = CTSState(torch.zeros(1, 77, 32), torch.zeros(1, 77, 32), torch.zeros(1, 1, 8, 8))
    with pytest.raises(RuntimeError):
        with controller.active(state):
            raise RuntimeError("boom")
    with torch.no_grad():
        assert torch.equal(pipe.unet(sample, 10, encoder_hidden_states=text).sample, plain)
    assert "forward" not in pipe.unet.__dict__ and not hasattr(pipe.unet, "_diffusers_hook")
    controller.remove()
    assert {name: processor for name, processor in pipe.unet.attn_processors.items()} == before


class _Spy:
    """Records the embeddings every C-T-S branch receives."""

    def __init__(self):
        self.calls: list[dict[str, torch.Tensor]] = []

    def install(self, monkeypatch):
        original = CTSAttnProcessor.__call__
        spy = self

        def recording(processor, attn, hidden_states, encoder_hidden_states=None, *args, cts=None, **kwargs):
            state = cts.state if cts is not None and processor.index is not None else None
            if state is not None and encoder_hidden_states is not None:
                spy.calls.append(
                    {
                        "total": encoder_hidden_states.clone(),
                        "center": state.center.clone(),
                        "surrounding": state.surrounding.clone(),
                    }
                )
            return original(processor, attn, hidden_states, encoder_hidden_states, *args, cts=cts, **kwargs)

        monkeypatch.setattr(CTSAttnProcessor, "__call__", recording)


def _encode(pipe, text: str) -> torch.Tensor:
    ids = pipe.tokenizer(
        text, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return pipe.text_encoder(ids)[0]


def test_each_text_reaches_the_processor_on_its_own(tiny_components, monkeypatch):
    pipe = _pipe(tiny_components)
    spy = _Spy()
    spy.install(monkeypatch)
    _run(pipe, cts=CTSController(pipe.unet, region_strength=0.5), guidance=1.0)
    assert spy.calls, "C-T-S processors never ran"
    call = spy.calls[0]
    with torch.no_grad():
        assert torch.allclose(call["total"][0], _encode(pipe, PROMPTS.total)[0], atol=1e-5)
        assert torch.allclose(call["center"][0], _encode(pipe, "a red barn")[0], atol=1e-5)
        assert torch.allclose(call["surrounding"][0], _encode(pipe, "snowy field")[0], atol=1e-5)
    assert not torch.allclose(call["center"], call["surrounding"])
    assert not torch.allclose(call["center"], call["total"])


def test_guidance_pairs_each_negative_with_its_own_branch(tiny_components, monkeypatch):
    pipe = _pipe(tiny_components)
    spy = _Spy()
    spy.install(monkeypatch)
    _run(pipe, cts=CTSController(pipe.unet, region_strength=0.5), negative="blurry", guidance=7.5, num_images=2)
    call = spy.calls[0]
    with torch.no_grad():
        negative = _encode(pipe, "blurry")[0]
        expected = {
            "total": _encode(pipe, PROMPTS.total)[0],
            "center": _encode(pipe, "a red barn")[0],
            "surrounding": _encode(pipe, "snowy field")[0],
        }
    for branch, positive in expected.items():
        batch = call[branch]
        assert batch.shape[0] == 4  # [neg, neg, pos, pos]: diffusers' order, same for every branch
        for row in (0, 1):
            assert torch.allclose(batch[row], negative, atol=1e-5), (branch, row)
        for row in (2, 3):
            assert torch.allclose(batch[row], positive, atol=1e-5), (branch, row)


# ---------------------------------------------------------------- processor level


def _attention_setup(tiny_components, gate: float, adapter: CTSAdapter | None = None):
    unet = tiny_components["unet"]
    name = cross_attention_names(unet)[0]
    attn = unet.get_submodule(name[: -len(".processor")])
    controller = CTSController(unet, adapter=adapter, region_strength=gate)
    return attn, controller


def _attend(attn, controller, mask: torch.Tensor, center, surrounding, total, hidden):
    state = CTSState(center=center, surrounding=surrounding, mask=mask)
    controller.install()
    with torch.no_grad():  # the keywords a UNet passes to each attention from its ``cross_attention_kwargs``
        return attn(hidden, encoder_hidden_states=total, **controller.attention_kwargs(state))


def _texts(seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 77, 32, generator=torch.Generator().manual_seed(seed))


def test_hard_mask_routes_center_and_surrounding_to_their_tokens(tiny_components):
    attn, controller = _attention_setup(tiny_components, gate=1.0)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :3] = 1.0  # left 3 columns: generate
    generate = mask.flatten(2)[0, 0].bool()
    hidden = torch.randn(1, 64, attn.query_dim, generator=torch.Generator().manual_seed(1))
    base = _attend(attn, controller, mask, _texts(1), _texts(2), _texts(3), hidden)
    new_center = _attend(attn, controller, mask, _texts(4), _texts(2), _texts(3), hidden)
    new_surround = _attend(attn, controller, mask, _texts(1), _texts(5), _texts(3), hidden)
    assert torch.equal(new_center[0, generate], base[0, generate])  # center text never reaches generated tokens
    assert not torch.allclose(new_center[0, ~generate], base[0, ~generate])
    assert torch.equal(new_surround[0, ~generate], base[0, ~generate])  # surrounding never reaches known tokens
    assert not torch.allclose(new_surround[0, generate], base[0, generate])
    # at g = 1 the total prompt is not used at all
    new_total = _attend(attn, controller, mask, _texts(1), _texts(2), _texts(6), hidden)
    assert torch.allclose(new_total, base, atol=1e-6)


def test_soft_mask_blends_branches_in_proportion(tiny_components):
    attn, controller = _attention_setup(tiny_components, gate=0.6)
    hidden = torch.randn(1, 64, attn.query_dim, generator=torch.Generator().manual_seed(1))
    texts = (_texts(1), _texts(2), _texts(3))
    known = _attend(attn, controller, torch.zeros(1, 1, 8, 8), *texts, hidden)
    generated = _attend(attn, controller, torch.ones(1, 1, 8, 8), *texts, hidden)
    for weight in (0.25, 0.5, 0.9):
        soft = _attend(attn, controller, torch.full((1, 1, 8, 8), weight), *texts, hidden)
        assert torch.allclose(soft, (1 - weight) * known + weight * generated, atol=1e-5)


def test_token_mask_is_area_averaged_per_block():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1.0
    mask[..., :, 4] = 0.5
    state = CTSState(torch.zeros(1, 77, 4), torch.zeros(1, 77, 4), mask)
    full = state.token_mask(64, torch.float32, torch.device("cpu")).view(8, 8)
    assert torch.equal(full, mask[0, 0])
    half = state.token_mask(16, torch.float32, torch.device("cpu")).view(4, 4)
    assert torch.allclose(half[:, 0], torch.ones(4)) and torch.allclose(half[:, 2], torch.full((4,), 0.25))
    with pytest.raises(ValueError):
        state.token_mask(10, torch.float32, torch.device("cpu"))


# ---------------------------------------------------------------- the sparse path (token subsets)


def _unet(unet, controller, sample, mask, center, surrounding, total, encoder_attention_mask=None) -> torch.Tensor:
    state = CTSState(center=center, surrounding=surrounding, mask=mask)
    with controller.active(state):
        return unet(sample, 10, encoder_hidden_states=total, encoder_attention_mask=encoder_attention_mask).sample


def _dense(monkeypatch) -> None:
    """Take the path a compiled UNet takes: every branch on every token, weighted by the mask."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)


def _seam_masks(batch: int, height: int, width: int) -> torch.Tensor:
    """A different soft outpaint mask per example: known block, generated border, a soft seam."""
    masks = torch.ones(batch, 1, height, width)
    for example in range(batch):
        masks[example, :, example : height - 2, 1 + example : width - 1] = 0.0
        masks[example, :, height - 2, :] = 0.5
    return masks


@pytest.mark.parametrize("latent", [(8, 8), (8, 6), (7, 5), (5, 9)])
def test_sparse_path_equals_dense_path_on_any_grid(tiny_components, monkeypatch, latent):
    """Non-square and odd latent grids, a different mask per example: the token subsets change nothing."""
    unet = tiny_components["unet"]
    controller = CTSController(unet, region_strength=0.7)
    sample = torch.randn(2, 9, *latent, generator=torch.Generator().manual_seed(1))
    texts = (_texts(1, batch=2), _texts(2, batch=2), _texts(3, batch=2))
    mask = _seam_masks(2, *latent)
    with torch.no_grad():
        sparse = _unet(unet, controller, sample, mask, *texts)
        _dense(monkeypatch)
        dense = _unet(unet, controller, sample, mask, *texts)
    assert sparse.shape == (2, 4, *latent)
    assert torch.allclose(sparse, dense, atol=1e-5)


def test_batch_with_a_mask_per_example_equals_each_example_alone(tiny_components):
    unet = tiny_components["unet"]
    controller = CTSController(unet, region_strength=1.0)
    sample = torch.randn(2, 9, 8, 6, generator=torch.Generator().manual_seed(1))
    texts = (_texts(1, batch=2), _texts(2, batch=2), _texts(3, batch=2))
    mask = _seam_masks(2, 8, 6)
    mask[1] = 1.0 - mask[1]  # the second example generates where the first one is known
    with torch.no_grad():
        batched = _unet(unet, controller, sample, mask, *texts)
        for example in range(2):
            alone = _unet(
                unet,
                controller,
                sample[example : example + 1],
                mask[example : example + 1],
                *(text[example : example + 1] for text in texts),
            )
            assert torch.allclose(batched[example : example + 1], alone, atol=1e-5), example


def test_encoder_attention_mask_is_honoured_on_the_sparse_path(tiny_components, monkeypatch):
    """A text attention mask has query dimension 1: it applies to every token subset as it is."""
    unet = tiny_components["unet"]
    controller = CTSController(unet, region_strength=0.6)
    sample = torch.randn(2, 9, 8, 8, generator=torch.Generator().manual_seed(1))
    center, surrounding, total = _texts(1, batch=2), _texts(2, batch=2), _texts(3, batch=2)
    keep = torch.ones(2, 77)
    keep[:, 10:] = 0.0  # only the first 10 text tokens count
    mask = _seam_masks(2, 8, 8)
    with torch.no_grad():
        out = _unet(unet, controller, sample, mask, center, surrounding, total, encoder_attention_mask=keep)
        # the masked text tokens change nothing, in any branch
        changed = [text.clone() for text in (center, surrounding, total)]
        for text in changed:
            text[:, 10:] = torch.randn(2, 67, 32, generator=torch.Generator().manual_seed(9))
        assert torch.allclose(
            _unet(unet, controller, sample, mask, *changed, encoder_attention_mask=keep), out, atol=1e-5
        )
        # and the mask matters
        assert not torch.allclose(_unet(unet, controller, sample, mask, center, surrounding, total), out, atol=1e-4)
        _dense(monkeypatch)
        dense = _unet(unet, controller, sample, mask, center, surrounding, total, encoder_attention_mask=keep)
    assert torch.allclose(out, dense, atol=1e-5)


def test_token_subsets_are_computed_once_per_grid_per_call(tiny_components, monkeypatch):
    """Reading the mask costs a host synchronisation on a GPU: once per grid size, not per block or step."""
    import vipcli_model.cts.attention as cts

    computed = []
    original = cts._token_subset
    monkeypatch.setattr(
        cts, "_token_subset", lambda needed, device: computed.append(needed.numel()) or original(needed, device)
    )
    unet = tiny_components["unet"]
    controller = CTSController(unet, region_strength=0.5)
    state = CTSState(center=_texts(1), surrounding=_texts(2), mask=_seam_masks(1, 8, 8))
    with controller.active(state), torch.no_grad():
        for _ in range(3):  # three denoising steps of one call
            unet(torch.randn(1, 9, 8, 8), 10, encoder_hidden_states=_texts(3))
    grids = {4 * 4}  # the tiny UNet has cross-attention at half resolution only (down, mid, up)
    assert len(cross_attention_names(unet)) > 2 and computed == [n for n in grids for _ in ("center", "surrounding")]


def test_adapter_follows_the_execution_device(tiny_components):
    """With --cpu-offload the UNet reaches the GPU only while it runs: the adapter moves on first use."""
    unet = tiny_components["unet"]
    controller = CTSController(unet, adapter=CTSAdapter(unet, rank=4))
    assert controller.adapter_on(torch.device("cpu")) is controller.adapter  # already there: left alone
    moved = controller.adapter_on(torch.device("meta"))  # a second device a CPU machine has
    assert all(parameter.device.type == "meta" for parameter in moved.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_adapter_on_cpu_runs_with_a_unet_on_the_gpu(tiny_components):
    unet = tiny_components["unet"].to("cuda")
    adapter = CTSAdapter(unet, rank=4, out_delta=True)  # on the CPU, as with model CPU offload
    state = CTSState(center=_texts(1).cuda(), surrounding=_texts(2).cuda(), mask=_seam_masks(1, 8, 8).cuda())
    with CTSController(unet, adapter=adapter).active(state), torch.no_grad():
        out = unet(torch.randn(1, 9, 8, 8, device="cuda"), 10, encoder_hidden_states=_texts(3).cuda()).sample
    assert out.is_cuda and adapter.gate_logits.is_cuda


# ---------------------------------------------------------------- the adapter


@pytest.mark.parametrize("out_delta", [False, True])
def test_fresh_adapter_equals_zero_shot_exactly(tiny_components, out_delta):
    """Zero-initialised deltas and a gate at the zero-shot strength: the same numbers, bit for bit."""
    pipe = _pipe(tiny_components)
    adapter = CTSAdapter(pipe.unet, rank=4, out_delta=out_delta)
    assert np.array_equal(
        _run(pipe, cts=CTSController(pipe.unet, adapter=adapter)), _run(pipe, cts=CTSController(pipe.unet))
    )
    sample, mask = torch.randn(2, 9, 8, 8, generator=torch.Generator().manual_seed(3)), _seam_masks(2, 8, 8)
    texts = (_texts(1, batch=2), _texts(2, batch=2), _texts(3, batch=2))
    with torch.no_grad():
        trained = _unet(pipe.unet, CTSController(pipe.unet, adapter=adapter), sample, mask, *texts)
        zero_shot = _unet(pipe.unet, CTSController(pipe.unet), sample, mask, *texts)
    assert torch.equal(trained, zero_shot)


def test_adapter_gates_are_bounded_and_have_their_own_group(tiny_components):
    adapter = CTSAdapter(tiny_components["unet"], rank=4)
    assert torch.allclose(adapter.gates(), torch.full_like(adapter.gates(), 0.5))
    with torch.no_grad():
        adapter.gate_logits.copy_(torch.tensor([-100.0, 100.0] * (len(adapter.block_names) // 2)))
    gates = adapter.gates().detach()
    assert float(gates.min()) >= 0.0 and float(gates.max()) <= 1.0
    groups = adapter.parameter_groups(lr=1e-4, gate_lr=1e-2, weight_decay=0.01)
    gate_group = next(g for g in groups if g["name"] == "cts_gates")
    assert gate_group["weight_decay"] == 0.0 and gate_group["lr"] == 1e-2
    assert gate_group["params"][0] is adapter.gate_logits
    delta_params = {id(p) for p in next(g for g in groups if g["name"] == "cts_deltas")["params"]}
    assert id(adapter.gate_logits) not in delta_params
    assert len(delta_params) + 1 == len(list(adapter.parameters()))


@pytest.mark.parametrize("out_delta", [False, True])
def test_adapter_round_trip_is_bit_exact(tiny_components, tmp_path, out_delta):
    unet = tiny_components["unet"]
    adapter = CTSAdapter(unet, rank=4, out_delta=out_delta)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(torch.randn_like(parameter))
    path = adapter.save(tmp_path / "run", base_model="tiny")
    assert path.name == "cts_adapter.safetensors" and not list(tmp_path.rglob("*.tmp"))
    loaded = CTSAdapter.load(path, unet, base_model="tiny")
    assert loaded.rank == 4 and loaded.out_delta == out_delta
    assert adapter.state_dict().keys() == loaded.state_dict().keys()
    for (name, a), (_, b) in zip(adapter.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "vip-cts-adapter" and meta["format_version"] == "1" and meta["base_model"] == "tiny"
    assert len(json.loads(meta["gates"])) == len(adapter.block_names)


def test_adapter_for_another_model_or_version_is_refused(tiny_components, tmp_path):
    from tiny_models import build_other_tiny_unet

    path = CTSAdapter(tiny_components["unet"], rank=4).save(tmp_path / "a.safetensors", base_model="tiny")
    other = build_other_tiny_unet()
    with pytest.raises(ModelLoadError, match="trained for base model 'tiny'"):
        CTSAdapter.load(path, other, base_model="other")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file(tensors, str(tmp_path / "v9.safetensors"), metadata={"format": "vip-cts-adapter", "format_version": "9"})
    with pytest.raises(ModelLoadError, match="format version 9"):
        CTSAdapter.load(tmp_path / "v9.safetensors", tiny_components["unet"])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="not a readable safetensors"):
        CTSAdapter.load(tmp_path / "junk.safetensors", tiny_components["unet"])


def test_adapter_leaves_base_unet_parameters_alone(tiny_components):
    unet = tiny_components["unet"]
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    adapter = CTSAdapter(unet, rank=4)
    assert not set(map(id, adapter.parameters())) & set(map(id, unet.parameters()))
    controller = CTSController(unet, adapter=adapter)
    image = torch.randn(1, 9, 8, 8)
    state = CTSState(torch.randn(1, 77, 32), torch.randn(1, 77, 32), torch.ones(1, 1, 8, 8))
    with controller.active(state):
        loss = unet(image, 10, encoder_hidden_states=torch.randn(1, 77, 32)).sample.square().mean()
    loss.backward()
    assert adapter.gate_logits.grad is not None and adapter.gate_logits.grad.abs().sum() > 0
    after = unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
