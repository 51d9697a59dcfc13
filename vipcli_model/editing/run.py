"""Photos to files in one call: ``edit_images``, what ``vip edit`` runs (the batch side of :mod:`edit`).

For each input: load it, (with ``expand``) have the captioner rewrite the instruction for it, edit it with
:class:`~vipcli_model.editing.editor.Editor`, and save each result under a name no other result of the run has
(``outputs.plan_outputs``: ``<stem>_edit.png``). Every input's outputs are checked first, before any model loads.
An input that fails (unreadable, an existing output without ``overwrite``, a captioner answer that is not an
instruction...) is reported through ``on_item`` and skipped; a model that cannot be had stops the run (the loop is
``batch.run_batch``, shared with ``vip outpaint``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vipcli_model.batch import BatchItem, BatchRun, ItemCallback, WrittenFile, run_batch
from vipcli_model.config import ModelConfig, PromptConfig, sampler_settings
from vipcli_model.editing.editor import DEFAULT_EDIT_MODEL, EditConfig, check_edit_config
from vipcli_model.errors import OptionError, OutOfMemory, on_gpu, what_ran_out
from vipcli_model.images.io import check_mask_size, format_parameters, load_image, load_mask, save_image
from vipcli_model.images.outputs import (
    InputImage,
    check_destinations,
    find_inputs,
    job_settings,
    outputs_finished,
    plan_outputs,
)
from vipcli_model.outpainting.metadata import vip_version

EditItem = BatchItem  # what happened to one input (same fields as an outpaint's)
EditRun = BatchRun  # the outcome of a run


@dataclass(frozen=True)
class EditJob:
    """Everything an editing run needs besides its inputs."""

    edit: EditConfig = EditConfig()  # the instruction and how the edit runs
    model: ModelConfig = ModelConfig(model=DEFAULT_EDIT_MODEL)  # the InstructPix2Pix model, where it runs
    captioner: PromptConfig = PromptConfig()  # which captioner rewrites the instruction (with `expand`)
    output: str | Path | None = (
        None  # a folder, or one file name for a run that writes one file; None: beside each input
    )
    overwrite: bool = False  # replace existing files (never files this run wrote)
    skip_existing: bool = False  # resume: skip an input whose outputs are there, made by this job (``job_record``)


def edit_kinds(num_images: int) -> list[str]:
    """The name endings of one input's results."""
    return ["edit"] if num_images == 1 else [f"edit_{index + 1}" for index in range(num_images)]


def job_record(job: EditJob) -> dict[str, Any]:
    """The settings that make a file this job's output, as given (stored as "job" in its metadata; compared by
    ``skip_existing``); where it ran (device) is left out."""
    edit, model, captioner = job.edit, job.model, job.captioner
    return job_settings(
        {
            "model": model.model,
            "model_config": model.model_config,
            "dtype": model.dtype,
            "instruction": edit.instruction,
            "steps": edit.steps,
            "guidance": edit.guidance,
            "image_guidance": edit.image_guidance,
            "negative": edit.negative,
            "seed": edit.seed,
            "scheduler": edit.scheduler,
            "num_images": edit.num_images,
            "mask": edit.mask,
            "feather": edit.feather,
            "threshold": edit.threshold,
            "expand": edit.expand,
            "captioner": captioner.captioner if edit.expand else None,
            "captioner_url": captioner.captioner_url if edit.expand else None,
            "captioner_model": captioner.captioner_model if edit.expand else None,
        }
    )


def check_edit_job(job: EditJob) -> None:
    """Reject settings that are wrong without any image or model (``OptionError``)."""
    check_edit_config(job.edit)
    captioner = job.captioner
    if not job.edit.expand and captioner.names_captioner:
        raise OptionError("`captioner`/`captioner_url`/`captioner_model` rewrite the instruction: they need `expand`")
    captioner.check_captioner()
    from vipcli_model.models.loading import check_model_config

    check_model_config(job.model)


def edit_images(
    inputs: Sequence[str | Path],
    job: EditJob,
    *,
    on_item: ItemCallback | None = None,
    on_loading: Callable[[str], None] | None = None,
    on_step: Callable[[Path, int, int], None] | None = None,
    editor: Any = None,
    captioner: Any = None,
    download_progress: Any = None,
) -> EditRun:
    """Edit files, folders (searched recursively) and glob patterns to files, the way ``vip edit`` does.

    - ``on_item(item, done, total)`` after each input (inputs that name no image come first);
    - ``on_loading(what)`` before a model loads; ``on_step(path, step, steps)`` after each denoising step;
    - ``editor`` / ``captioner``: already loaded ones; by default each loads when the first image needs it.

    With ``job.skip_existing`` an input whose outputs are all there, made by this job (``job_record``), is skipped;
    an output made with other settings fails its input, naming them, unless ``job.overwrite``.

    Raises ``OptionError`` for bad settings before any work, ``ModelNotFoundError`` / ``ModelLoadError`` when the
    editor (or the captioner of ``expand``) cannot be had; the files written until then stay.
    """
    check_edit_job(job)
    found, missing = find_inputs(inputs)
    plans = plan_outputs(found, job.output, edit_kinds(job.edit.num_images))
    user_mask = load_mask(job.edit.mask) if job.edit.mask else None
    models = EditModels(job, editor, captioner, on_loading, download_progress)

    def work(image_input: InputImage, destinations: list[Path], item: EditItem) -> None:
        _edit_one(image_input, destinations, job, user_mask, models.get, item, on_step)

    return _run(found, plans, missing, work, job, on_item)


class EditModels:
    """The editor and the captioner of ``job``, each loaded when the first image needs it and kept for the next."""

    def __init__(
        self,
        job: EditJob,
        editor: Any = None,
        captioner: Any = None,
        on_loading: Callable[[str], None] | None = None,
        download_progress: Any = None,
    ) -> None:
        self.job, self.on_loading, self.download_progress = job, on_loading, download_progress
        self.models = {"editor": editor, "captioner": captioner}

    def get(self, kind: str) -> Any:
        if self.models[kind] is None:
            if self.on_loading is not None:
                self.on_loading(self.job.model.model if kind == "editor" else "captioner")
            self.models[kind] = _load(kind, self.job, self.download_progress)
        return self.models[kind]


def edit_one(
    image_input: InputImage, destinations: list[Path], job: EditJob, models: EditModels | None = None
) -> EditItem:
    """One input of a run, done as ``edit_images`` does each (``outpainting.run.outpaint_one``'s twin): its failure
    is the item's, a model that cannot be had raises; ``models`` kept between calls load once."""
    models = models if models is not None else EditModels(job)
    user_mask = load_mask(job.edit.mask) if job.edit.mask else None

    def work(image_input: InputImage, destinations: list[Path], item: EditItem) -> None:
        _edit_one(image_input, destinations, job, user_mask, models.get, item, None)

    return _run([image_input], [list(destinations)], [], work, job, None).items[0]


def _run(found, plans, missing, work, job: EditJob, on_item: ItemCallback | None) -> EditRun:
    return run_batch(
        found,
        plans,
        missing,
        work,
        overwrite=job.overwrite,
        check_destinations=check_destinations,
        out_of_memory=lambda path, exc: _out_of_memory(path, job, exc),
        on_item=on_item,
        finished=_finished_check(job_record(job)) if job.skip_existing else None,
    )


def _finished_check(record: dict[str, Any]) -> Callable[[list[Path], bool], bool]:
    return lambda destinations, overwrite: outputs_finished(destinations, record, overwrite)


def _out_of_memory(path: Path, job: EditJob, exc: BaseException) -> OutOfMemory:
    """Running out of memory on ``path``, as one line: what ran out, and what to try (an edit has no batch size)."""
    if not on_gpu(exc):
        return OutOfMemory(
            f"{path}: out of system memory: free memory (close other programs), or shrink the image first"
        )
    fewer = "fewer `num_images` (they run together), or " if job.edit.num_images > 1 else ""
    return OutOfMemory(
        f"{path}: out of {what_ran_out(exc, job.model.device)}: try {fewer}closing other programs that use the GPU, "
        "or `device` cpu (slower)"
    )


def _load(kind: str, job: EditJob, download_progress: Any) -> Any:
    if kind == "editor":
        from vipcli_model.editing.editor import Editor

        return Editor(job.model, tqdm_class=download_progress)
    from vipcli_model.captioning.captioner import load_captioner

    spec = job.captioner
    return load_captioner(
        spec.captioner, url=spec.captioner_url, server_model=spec.captioner_model, device=job.model.device
    )


def _edit_one(
    image_input: InputImage,
    destinations: list[Path],
    job: EditJob,
    user_mask: Any,
    get: Callable[[str], Any],
    item: EditItem,
    on_step: Callable[[Path, int, int], None] | None,
) -> None:
    path = image_input.path
    loaded = load_image(path)
    item.notes.extend(loaded.notes)
    if user_mask is not None:
        check_mask_size(user_mask, loaded.image.size, job.edit.mask)  # before the editor loads
    editor = get("editor")
    instruction, info = job.edit.instruction.strip(), {"source": "user"}
    if job.edit.expand:
        from vipcli_model.editing.editor import EXPAND_TEMPLATE_VERSION, expand_instruction

        expanded = expand_instruction(get("captioner"), loaded.image, instruction, tokenizer=editor.pipe.tokenizer)
        instruction = expanded.text
        info = {
            "source": "captioner",
            "captioner": expanded.captioner,
            "template_version": EXPAND_TEMPLATE_VERSION,
            "truncated": expanded.truncated,
        }
        if expanded.truncated:
            item.notes.append("expanded instruction cut to fit 77 tokens")
    result = editor.edit(
        loaded.image,
        job.edit,
        instruction=instruction,
        user_mask=user_mask,
        source=str(path),
        instruction_info=info,
        step_callback=(lambda done, steps: on_step(path, done, steps)) if on_step is not None else None,
    )
    metadata = {"vip_version": vip_version(), "command": "edit", **result.metadata}
    for index, (image, destination, seed) in enumerate(zip(result.images, destinations, result.seeds)):
        # its own seed: a one-image edit remakes it; the job as given, to recognise the file when resuming
        file_metadata = dict(metadata, index=index, seed=seed, job=job_record(job))
        parameters = format_parameters(instruction, job.edit.negative, parameters_settings(file_metadata))
        overwrite = job.overwrite or job.skip_existing  # a file there was checked to be this job's
        save_image(image, destination, metadata=file_metadata, parameters=parameters, overwrite=overwrite)
        item.written.append(WrittenFile(destination, file_metadata))


def parameters_settings(metadata: dict[str, Any]) -> dict[str, object]:
    """The A1111-style settings of an edit (the PNG ``parameters`` chunk; the prompt line is the edit prompt)."""
    expanded = metadata["edit_prompt"] != metadata["instruction"]
    return {
        "Steps": metadata["steps"],
        **sampler_settings(metadata["scheduler"]),
        "CFG scale": metadata["guidance"],
        "Image CFG scale": metadata["image_guidance"],
        "Seed": metadata["seed"],
        "Size": "x".join(map(str, metadata["image_size"])),
        "Model": metadata["model"],
        "Instruction": metadata["instruction"] if expanded else None,
        "Change threshold": metadata["threshold"],
        "Version": f"vip {metadata['vip_version']}",
    }
