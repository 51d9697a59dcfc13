"""Photos to files in one call: ``outpaint_images``, what ``vip outpaint`` runs.

For each input: load it, choose its prompts (the user's, else the captioner's, through the caption
cache), outpaint it with :class:`~vipcli_model.outpainting.outpainter.Outpainter`, and save each result under a
name no other result of the run has (``outputs.plan_outputs``). Every input's outputs are
checked first (``outputs.check_destinations``), before any model loads. An input that fails
(unreadable, an output that cannot be written, nothing to generate...) is reported through
``on_item`` with its error, whose ``exit_code`` says which kind it is, and skipped; a model that
cannot be had stops the run (the loop is ``batch.run_batch``, shared with ``vip edit``). With ``preview`` only
the canvas and mask are written, and nothing heavy is imported: no torch, no diffusers.

Several processes (``accelerate launch --num_processes N -m vipcli.main outpaint ...``, one per GPU, or CPU
processes over gloo): each takes every N-th input (output names are planned over all inputs first, so they are
those of a one-process run), writes its own results, and every process ends with every process's items (the CLI
prints the summary once, on the main process, and each process exits with the status of the whole run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from vipcli_model.batch import BatchItem, BatchRun, ItemCallback, WrittenFile, current_processes, gather, run_batch  # noqa: F401 - WrittenFile and ItemCallback: the run's types, importable from here
from vipcli_model.config import (
    BlendConfig,
    DetailConfig,
    ExpansionConfig,
    GenerationConfig,
    ModelConfig,
    PromptConfig,
    check_generation,
)
from vipcli_model.errors import OptionError, OutOfMemory, VipError, on_gpu, what_ran_out
from vipcli_model.images.io import format_parameters, load_image, load_mask, save_image
from vipcli_model.images.outputs import (
    InputImage,
    check_destinations,
    find_inputs,
    job_settings,
    output_kinds,
    outputs_finished,
    plan_outputs,
)
from vipcli_model.outpainting.canvas import (
    check_expansion_options,
    outpaint_mask,
    plan_canvas,
    prepare_geometry,
    validate_expansion_values,
)
from vipcli_model.outpainting.metadata import parameters_text, preview_metadata
from vipcli_model.prompts import RegionPrompts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutpaintJob:
    """Everything a run needs besides its inputs."""

    expansion: ExpansionConfig = ExpansionConfig()  # how the canvas grows
    prompts: PromptConfig = PromptConfig()  # the user's prompts, or which captioner writes them
    generation: GenerationConfig = GenerationConfig()  # the diffusion run
    blend: BlendConfig = BlendConfig()  # paste-back
    detail: DetailConfig = DetailConfig()  # the detail pass at full resolution (detail.py)
    model: ModelConfig = ModelConfig()  # which model runs, where
    output: str | Path | None = (
        None  # a folder, or one file name for a run that writes one file; None: beside each input
    )
    overwrite: bool = False  # replace existing files (never files this run wrote)
    preview: bool = False  # write only the canvas and mask; loads no model
    skip_existing: bool = False  # resume: skip an input whose outputs are there, made by this job (``job_record``)


OutpaintItem = BatchItem  # what happened to one input of a run
OutpaintRun = BatchRun  # the outcome of ``outpaint_images``


def check_job(job: OutpaintJob) -> None:
    """Reject settings that are wrong without any image or model (``OptionError``).

    Messages name arguments as the library calls them, in backticks (`ratio`, `caption=False`); the
    CLI shows its flags instead (``vipcli.options.FLAGS``).
    """
    expansion, prompts = job.expansion, job.prompts
    sides = {"left": expansion.left, "right": expansion.right, "top": expansion.top, "bottom": expansion.bottom}
    check_expansion_options(
        ratio=expansion.ratio, aspect=expansion.aspect, size=expansion.size, sides=sides, align=expansion.align
    )
    validate_expansion_values(ratio=expansion.ratio, aspect=expansion.aspect, size=expansion.size, sides=sides)
    if not any((expansion.ratio, expansion.aspect, expansion.size, *sides.values(), expansion.mask)):
        raise OptionError("say how to expand: `ratio`, `aspect`, `size`, `left`/`right`/`top`/`bottom`, or `mask`")
    if not prompts.caption and prompts.names_captioner:
        raise OptionError("`caption=False` cannot be combined with `captioner`/`captioner_url`/`captioner_model`")
    prompts.check_captioner()
    if not job.generation.cts and job.generation.region_strength is not None:
        raise OptionError("`region_strength` has no effect with `cts=False`")
    if job.model.fast_lora and not job.model.fast:
        raise OptionError("`fast_lora` needs `fast`: it replaces the fast preset's LoRA")
    check_generation(job.generation, job.blend)
    from vipcli_model.outpainting.detail import check_detail_options

    check_detail_options(job.detail)
    if not job.preview:
        from vipcli_model.models.loading import check_model_config

        check_model_config(job.model)


def job_record(job: OutpaintJob) -> dict[str, Any]:
    """The settings that make a file this job's output, as the user gave them (unset: None, the family decides).

    Stored as "job" in every output's metadata; ``skip_existing`` compares it. Where the job ran (device, memory
    plan, offloading, compilation) is left out: a run resumed on another machine makes the same images.
    """
    expansion, prompts, generation, blend, detail, model = (
        job.expansion,
        job.prompts,
        job.generation,
        job.blend,
        job.detail,
        job.model,
    )
    return job_settings(
        {
            "model": model.model,
            "model_config": model.model_config,
            "adapter": model.adapter,
            "vae": model.vae,
            "fast": model.fast,
            "fast_lora": model.fast_lora,
            "dtype": model.dtype,
            "preview": job.preview,
            **{name: getattr(expansion, name) for name in ("ratio", "aspect", "size", "align", "mask")},
            **{name: getattr(expansion, name) for name in ("left", "right", "top", "bottom")},
            "total": prompts.total,
            "center": prompts.center,
            "surrounding": prompts.surrounding,
            "keywords": prompts.keywords,
            "caption": prompts.caption,
            "captioner": prompts.captioner,
            "captioner_url": prompts.captioner_url,
            "captioner_model": prompts.captioner_model,
            "negative": generation.negative,
            "steps": generation.steps,
            "guidance": generation.guidance,
            "guidance_interval": generation.guidance_interval,
            "deep_cache": generation.deep_cache,
            "seed": generation.seed,
            "scheduler": generation.scheduler,
            "num_images": generation.num_images,
            "cts": generation.cts,
            "region_strength": generation.region_strength,
            "feather": blend.feather,
            "color_match": blend.color_match,
            "detail": detail.mode,
            "detail_strength": detail.strength,
            "detail_steps": detail.steps,
            "tile_size": detail.tile_size,
            "tile_overlap": detail.overlap,
        }
    )


def outpaint_images(
    inputs: Sequence[str | Path],
    job: OutpaintJob,
    *,
    on_item: ItemCallback | None = None,
    on_loading: Callable[[str], None] | None = None,
    on_step: Callable[[Path, int, int], None] | None = None,
    on_tile: Callable[[Path, int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    outpainter: Any = None,
    download_progress: Any = None,
    on_latents: Callable[[Path, int, int, Any], None] | None = None,
) -> OutpaintRun:
    """Outpaint files, folders (searched recursively) and glob patterns to files, the way ``vip outpaint`` does.

    - ``on_item(item, done, total)`` after each input (inputs that name no image come first);
    - ``on_loading(what)`` before a model loads; ``on_step(path, step, steps)`` after each denoising step;
      ``on_tile(path, tile, tiles)`` after each tile of the detail pass; ``on_latents(path, step, steps, latents)``
      after each denoising step, with the current latents (for previews);
    - ``on_warning(message)`` for what concerns the whole run (default: logged); ``on_note(message)`` once per
      run for what it chose not to do (the detail pass on a CPU; default: logged);
    - ``outpainter``: an ``Outpainter`` already loaded; by default ``job.model`` loads when the first
      image needs it;
    - ``download_progress``: a tqdm class drawing per-file progress when a model downloads on first use.

    With ``job.skip_existing`` an input whose outputs are all there, made by this job (``job_record``, read from
    each file's metadata), is skipped (status "skipped"): a stopped run resumes where it was. An output made with
    other settings fails its input, naming them, unless ``job.overwrite``.

    Raises ``OptionError`` for bad settings before any work, and ``ModelNotFoundError`` /
    ``ModelLoadError`` when the model (or a captioner named in ``job.prompts``) cannot be had;
    the files written until then stay.
    """
    check_job(job)
    found, missing = find_inputs(inputs)
    plans = plan_outputs(found, job.output, output_kinds(preview=job.preview, num_images=job.generation.num_images))
    total = len(found) + len(missing)  # of the whole run, also on each process of a multi-process one
    processes = current_processes()
    if processes.count > 1:  # this process's share: every count-th input; names were planned over all of them
        found, plans = found[processes.index :: processes.count], plans[processes.index :: processes.count]
        missing = missing if processes.is_main else []
        if job.model.device == "auto" and processes.device:
            job = replace(job, model=replace(job.model, device=processes.device))
    extra_mask = load_mask(job.expansion.mask) if job.expansion.mask else None
    warn = on_warning or (lambda message: logger.warning("%s", message))
    models = OutpaintModels(job, outpainter, on_loading, warn, download_progress)
    models.on_note = on_note or (lambda message: logger.info("%s", message))

    def work(image_input: InputImage, destinations: list[Path], item: OutpaintItem) -> None:
        _outpaint_one(image_input, destinations, job, extra_mask, models, item, on_step, on_tile, on_latents)

    run = _run(found, plans, missing, work, job, on_item, total)
    return gather(run, processes) if processes.count > 1 else run


def outpaint_one(
    image_input: InputImage, destinations: list[Path], job: OutpaintJob, models: OutpaintModels | None = None
) -> OutpaintItem:
    """One input of a run, done as ``outpaint_images`` does each: the per-input step a pipeline of one's own (Dask,
    a queue) maps over ``find_inputs`` / ``plan_outputs``. Its failure is the item's (status "failed"), except a
    model that cannot be had, which raises. ``models``: an ``OutpaintModels(job)`` kept between calls, so the model
    loads once; ``job`` is taken as checked (``check_job``).
    """
    models = models if models is not None else OutpaintModels(job)
    extra_mask = load_mask(job.expansion.mask) if job.expansion.mask else None

    def work(image_input: InputImage, destinations: list[Path], item: OutpaintItem) -> None:
        _outpaint_one(image_input, destinations, job, extra_mask, models, item, None, None)

    return _run([image_input], [list(destinations)], [], work, job, None, 1).items[0]


def _run(found, plans, missing, work, job: OutpaintJob, on_item: ItemCallback | None, total: int) -> OutpaintRun:
    return run_batch(
        found,
        plans,
        missing,
        work,
        overwrite=job.overwrite,
        check_destinations=check_destinations,
        out_of_memory=lambda path, exc: _out_of_memory(path, job, exc),
        on_item=on_item,
        total=total,
        finished=_finished_check(job_record(job)) if job.skip_existing else None,
    )


def _finished_check(record: dict[str, Any]) -> Callable[[list[Path], bool], bool]:
    return lambda destinations, overwrite: outputs_finished(destinations, record, overwrite)


def _out_of_memory(path: Path, job: OutpaintJob, exc: BaseException) -> OutOfMemory:
    """Running out of memory on ``path``, as one line: what ran out, and what to try."""
    if on_gpu(exc):
        return OutOfMemory(f"{path}: out of {what_ran_out(exc, job.model.device)}: try {_gpu_hints(job)}")
    try:
        with Image.open(path) as image:
            size = image.size
        expansion = job.expansion
        canvas = plan_canvas(
            size,
            ratio=expansion.ratio,
            aspect=expansion.aspect,
            size=expansion.size,
            left=expansion.left,
            right=expansion.right,
            top=expansion.top,
            bottom=expansion.bottom,
            align=expansion.align,
        ).canvas_size
    except Exception:  # noqa: BLE001 - the estimate is a courtesy; the message stands without it
        return OutOfMemory(f"{path}: not enough memory to outpaint this image: free memory, or shrink the image first")
    pixels = canvas[0] * canvas[1]
    results = 1 if job.preview else job.generation.num_images
    # RGB (4 bytes a pixel in memory) for the image, the canvas and each result, plus the mask
    needed = 4 * size[0] * size[1] + pixels * (4 + 1 + 4 * results)
    return OutOfMemory(
        f"{path}: not enough memory: a {size[0]}x{size[1]} image on a {canvas[0]}x{canvas[1]} canvas needs about "
        f"{needed / 2**30:.1f} GB of system memory besides the model; free memory, or shrink the image first"
    )


# memory plans from the most GPU memory to the least (models/memory.py)
LIGHTER_PLANS = ("full", "model-offload", "group-offload", "sequential-offload")


def _gpu_hints(job: OutpaintJob) -> str:
    """What lowers this run's GPU memory, among the settings it has not used yet (an outpaint has no batch size)."""
    model, hints = job.model, []
    current = "model-offload" if model.cpu_offload else model.memory
    lighter = LIGHTER_PLANS[LIGHTER_PLANS.index(current) + 1 :] if current in LIGHTER_PLANS else LIGHTER_PLANS[1:]
    if lighter:
        hints.append(f"a lighter `memory` plan ({', '.join(lighter)})")
    if not model.vae_tiling:
        hints.append("`vae_tiling`")
    if job.detail.mode != "off":
        hints.append("a smaller `tile_size` for the detail pass")
    if job.generation.num_images > 1:
        hints.append("fewer `num_images`")
    if not hints:
        return "closing other programs that use the GPU, or a smaller image"
    return ", ".join(hints[:-1]) + (" or " if len(hints) > 1 else "") + hints[-1]


class OutpaintModels:
    """The outpainter and the captioner of ``job.model`` / ``job.prompts``, each loaded when the first image needs it
    and kept for the next (a Dask worker keeps one for every input it gets)."""

    def __init__(
        self,
        job: OutpaintJob,
        outpainter: Any = None,
        on_loading: Callable[[str], None] | None = None,
        warn: Callable[[str], None] = lambda message: logger.warning("%s", message),
        download_progress: Any = None,
    ) -> None:
        self.job, self.outpainter, self.on_loading, self.warn = job, outpainter, on_loading, warn
        self.download_progress = download_progress
        self.captioner: Any = None
        self.cache: Any = None
        self.on_note: Callable[[str], None] = lambda message: None
        self.noted = False
        self.captioner_loaded = job.preview or not (job.prompts.caption and not job.prompts.given)

    def note_once(self, notes: list[str]) -> None:
        """The run's notes (the detail pass not run), said for the first image only: they hold for the run."""
        for note in notes if not self.noted else []:
            self.on_note(note)
        self.noted = self.noted or bool(notes)

    def get_outpainter(self) -> Any:
        if self.outpainter is None:
            from vipcli_model.outpainting.outpainter import Outpainter

            if self.on_loading is not None:
                self.on_loading(self.job.model.model)
            self.outpainter = Outpainter(self.job.model, tqdm_class=self.download_progress)
        return self.outpainter

    def get_captioner(self) -> tuple[Any, Any]:
        """The captioner and its cache; ``(None, None)`` when none is wanted or the default one is missing."""
        if not self.captioner_loaded:
            self.captioner, self.cache = self._load_captioner()
            self.captioner_loaded = True
        return self.captioner, self.cache

    def _load_captioner(self) -> tuple[Any, Any]:
        from vipcli_model.captioning.captioner import CaptionCache, load_captioner

        prompts = self.job.prompts
        if self.on_loading is not None:
            self.on_loading(f"captioner {prompts.captioner_url or prompts.captioner or 'default'}")
        try:
            captioner = load_captioner(
                prompts.captioner,
                url=prompts.captioner_url,
                server_model=prompts.captioner_model,
                device=self.job.model.device,
                tqdm_class=self.download_progress,
            )
        except VipError as exc:
            if prompts.captioner or prompts.captioner_url:
                raise
            self.warn(no_captioner_message(prompts.keywords, exc))
            return None, None
        return captioner, CaptionCache()


def no_captioner_message(keywords: str, exc: VipError) -> str:
    """One line saying what a run does when the default captioner cannot be had (``exc``), and how to get it."""
    from vipcli_model.errors import ModelNotFoundError
    from vipcli_model.models import hub

    why = "is not cached and HF_HUB_OFFLINE=1" if hub.offline() else "cannot be had"
    if not isinstance(exc, ModelNotFoundError):
        why = "cannot be loaded: " + str(exc).split(": ")[-1][:80]
    name = next(preset for preset, repo in hub.PRESETS.items() if repo == hub.DEFAULT_CAPTIONER_MODEL)
    does = (
        f"the Surrounding is the `keywords` '{keywords}' and there is no Center"
        if keywords
        else "outpainting without prompts (`caption=False` says so without this note)"
    )
    return f"no captioner ({name} {why}): {does}; `vip models download {name}` fetches it"


def _outpaint_one(
    image_input: InputImage,
    destinations: list[Path],
    job: OutpaintJob,
    extra_mask: Image.Image | None,
    models: OutpaintModels,
    item: OutpaintItem,
    on_step: Callable[[Path, int, int], None] | None,
    on_tile: Callable[[Path, int, int], None] | None = None,
    on_latents: Callable[[Path, int, int, Any], None] | None = None,
) -> None:
    path = image_input.path
    loaded = load_image(path)
    item.notes.extend(loaded.notes)
    if job.preview:
        geometry = prepare_geometry(loaded.image, job.expansion, alpha=loaded.alpha, extra_mask=extra_mask)
        metadata = dict(preview_metadata(str(path), job.expansion, geometry), job=job_record(job))
        for image, destination in zip((geometry.canvas, geometry.mask), destinations):
            save_image(image, destination, metadata=metadata, overwrite=job.overwrite or job.skip_existing)
            item.written.append(WrittenFile(destination, metadata))
        return
    _check_work(loaded.image, loaded.alpha, job.expansion, extra_mask)  # before any model loads
    outpainter = models.get_outpainter()
    captioner, cache = models.get_captioner()
    tokenizer, max_tokens = outpainter.prompt_window()
    prompts, prompt_info = choose_prompts(
        loaded.image, job.prompts, captioner=captioner, cache=cache, tokenizer=tokenizer, max_tokens=max_tokens
    )
    if prompt_info.get("truncated"):
        item.notes.append(f"captioner text cut to fit {max_tokens} tokens: {', '.join(prompt_info['truncated'])}")
    result = outpainter.outpaint(
        loaded.image,
        prompts,
        expansion=job.expansion,
        generation=job.generation,
        blend=job.blend,
        alpha=loaded.alpha,
        extra_mask=extra_mask,
        source=str(path),
        prompt_info=prompt_info,
        step_callback=(lambda done, steps: on_step(path, done, steps)) if on_step is not None else None,
        detail=job.detail,
        tile_callback=(lambda done, tiles: on_tile(path, done, tiles)) if on_tile is not None else None,
        latents_callback=(lambda done, steps, latents: on_latents(path, done, steps, latents))
        if on_latents is not None
        else None,
    )
    item.run_notes.extend(result.notes)  # with the item too: a Dask worker's models have no sink for them
    models.note_once(result.notes)
    # with skip_existing, a file there was checked to be this job's (an input stopped between its results)
    overwrite = job.overwrite or job.skip_existing
    for index, (image, destination, seed) in enumerate(zip(result.images, destinations, result.seeds)):
        # its own seed: a one-image run remakes it; the job as given, to recognise the file when resuming
        metadata = dict(result.metadata, index=index, seed=seed, job=job_record(job))
        total_prompt, settings = parameters_text(metadata)
        parameters = format_parameters(total_prompt, job.generation.negative, settings)
        save_image(image, destination, metadata=metadata, parameters=parameters, overwrite=overwrite)
        item.written.append(WrittenFile(destination, metadata))


def _check_work(
    image: Image.Image, alpha: Image.Image | None, expansion: ExpansionConfig, extra_mask: Image.Image | None
) -> None:
    """An image's option problems (a `mask` of the wrong size, nothing to generate), found without a model."""
    plan = plan_canvas(
        image.size,
        ratio=expansion.ratio,
        aspect=expansion.aspect,
        size=expansion.size,
        left=expansion.left,
        right=expansion.right,
        top=expansion.top,
        bottom=expansion.bottom,
        align=expansion.align,
    )
    if outpaint_mask(plan, extra_mask=extra_mask, alpha=alpha).getextrema()[1] == 0:
        raise OptionError(
            "nothing to generate: the canvas equals the image and no `mask` or transparency marks a region"
        )


def choose_prompts(
    image: Image.Image,
    prompts: PromptConfig,
    *,
    captioner: Any = None,
    cache: Any = None,
    tokenizer: Any = None,
    max_tokens: int = 77,
) -> tuple[RegionPrompts, dict]:
    """The prompts for one image, and where they came from.

    Prompts given by the user win (any of total / center / surrounding). Otherwise the captioner
    (a multimodal LLM) describes the photo as the Center and proposes the Surrounding, steered by
    the keywords; its text is fitted to ``max_tokens`` of ``tokenizer`` (``Outpainter.prompt_window``: the
    model's own text window). Without a captioner the keywords alone form the Surrounding (or nothing).
    """
    if prompts.given or captioner is None:
        built = RegionPrompts.build(
            center=prompts.center, surrounding=prompts.surrounding, total=prompts.total, keywords=prompts.keywords
        )
        return built, {"source": "user" if not built.is_empty else "unconditional"}
    from vipcli_model.captioning.captioner import caption_for_outpaint

    result = caption_for_outpaint(
        captioner, image, keywords=prompts.keywords, tokenizer=tokenizer, cache=cache, max_tokens=max_tokens
    )
    return result.prompts, {
        "source": "captioner",
        "captioner": result.model,
        "template_version": result.template_version,
        "truncated": result.truncated,
        "cached": result.cached,
    }
