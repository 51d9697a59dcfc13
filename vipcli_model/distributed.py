"""Runs over many inputs on a Dask cluster: ``run_on_dask`` (what ``vip outpaint`` / ``vip edit`` with ``dask`` run)
and ``process_task``, the one-input step every worker does.

A cluster is a ``dask scheduler`` and ``dask worker`` processes on any number of machines (``dask-jobqueue`` starts
them on SLURM or PBS, ``dask-kubernetes`` on Kubernetes). This process finds the inputs, plans every output name as a
one-machine run does (``images.outputs``) and checks every output before any work; each input left to do becomes one
task. The scheduler hands tasks to workers as they free up (a slow GPU takes fewer); a task whose worker dies runs
again on another (Dask's ``distributed.scheduler.allowed-failures``), and a task run again finds the files its first
try finished (they record the job) instead of refusing them. Each worker process loads the models once and keeps them
for every input it gets (``worker_models``), and does one generation at a time. When workers advertise a ``GPU``
resource (``dask worker --resources GPU=1``, one worker per GPU), each task asks for one.

Inputs and outputs are local paths, which every worker must see at the same place (a shared file system), or URLs
fsspec reads (``s3://``, ``gs://``...): a worker copies a URL input to a temporary folder, makes its outputs there and
uploads them whole (an object store never shows half an object).
"""

from __future__ import annotations

import glob
import logging
import posixpath
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vipcli_model.batch import STOPS_THE_RUN, BatchItem, BatchRun, ItemCallback, WrittenFile
from vipcli_model.editing.run import EditJob, EditModels, check_edit_job, edit_kinds, edit_one
from vipcli_model.editing.run import job_record as edit_record
from vipcli_model.errors import InputError, OptionError, OutputError, VipError
from vipcli_model.files import is_image_name
from vipcli_model.images.outputs import InputImage, check_destinations, find_inputs, outputs_finished, plan_outputs
from vipcli_model.outpainting.run import OutpaintJob, OutpaintModels, check_job, outpaint_one, output_kinds
from vipcli_model.outpainting.run import job_record as outpaint_record

logger = logging.getLogger(__name__)

INSTALL = "pip install 'vip-outpaint[dask]'"
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"  # where ``vip --dask`` finds the scheduler when not given


@dataclass(frozen=True)
class Task:
    """One input of a run, as a worker gets it."""

    source: str  # the image: a local path or an fsspec URL
    relative: str  # its path below the folder or pattern it was found under ('/'-separated)
    destinations: tuple[str, ...]  # its output files, planned over the whole run: local paths or URLs
    job: OutpaintJob | EditJob  # what to do with it


def is_url(text: str | Path) -> bool:
    """A location fsspec opens (``s3://``, ``gs://``, ``memory://``...); ``file://`` counts as a local path."""
    return "://" in str(text) and not str(text).startswith("file://")


def _local(text: str) -> Path:
    return Path(text.removeprefix("file://"))


def _fsspec():
    try:
        import fsspec
    except ImportError as exc:
        raise OptionError(f"URLs as inputs or outputs need fsspec: {INSTALL}") from exc
    return fsspec


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise OptionError(f"running on a Dask cluster needs Dask: {INSTALL}") from exc
    return distributed


# ---------------------------------------------------------------------------------------------- on the workers

_WORKER_MODELS: dict[str, tuple[threading.Lock, Any]] = {}
_WORKER_LOCK = threading.Lock()
_WORKER_WARNINGS: dict[str, list[str]] = {}  # by models: their warnings not yet sent back with an item


def worker_models(job: OutpaintJob | EditJob) -> tuple[threading.Lock, OutpaintModels | EditModels]:
    """This process's models for ``job`` (loaded on first use, then kept) and the lock that lets one generation run
    at a time. Keyed by the model settings: a worker serving two runs with other models keeps both."""
    key = _models_key(job)
    with _WORKER_LOCK:
        if key not in _WORKER_MODELS:
            if isinstance(job, OutpaintJob):  # its warnings go back with the next item (``process_task``)
                models = OutpaintModels(job, warn=_WORKER_WARNINGS.setdefault(key, []).append)
            else:
                models = EditModels(job)
            _WORKER_MODELS[key] = (threading.Lock(), models)
        return _WORKER_MODELS[key]


def _models_key(job: OutpaintJob | EditJob) -> str:
    """Which of this process's models serve ``job``: its type, model settings and prompt or captioner choice."""
    chooser = job.prompts if isinstance(job, OutpaintJob) else job.captioner
    return repr((type(job).__name__, job.model, chooser))


def process_task(task: Task) -> BatchItem:
    """Do one input on this worker: fetch a URL input, outpaint or edit it with this process's models, upload URL
    outputs. Its failure is the item's; a model that cannot be had raises (the run stops)."""
    lock, models = worker_models(task.job)
    with tempfile.TemporaryDirectory(prefix="vip-task-") as scratch:
        source = _fetch(task.source, Path(scratch)) if is_url(task.source) else _local(task.source)
        urls = [(index, url) for index, url in enumerate(task.destinations) if is_url(url)]
        staged = {str(_stage(url, Path(scratch) / str(index))): url for index, url in urls}  # local file -> URL
        made_in = {url: Path(local) for local, url in staged.items()}
        destinations = [made_in.get(url) or _local(url) for url in task.destinations]
        image_input = InputImage(path=source, relative=Path(task.relative))
        with lock:
            if isinstance(task.job, OutpaintJob):
                item = outpaint_one(image_input, destinations, task.job, models)
            else:
                item = edit_one(image_input, destinations, task.job, models)
            warnings = _WORKER_WARNINGS.get(_models_key(task.job), [])
            item.run_warnings, warnings[:] = list(warnings), []
        if item.status == "skipped":  # a try of this run that died finished them: they are this run's files
            from vipcli_model.images.io import read_metadata

            item.status = "written"
            item.written = [WrittenFile(path, read_metadata(path).get("vip") or {}) for path in destinations]
        for file in item.written:
            url = staged.get(str(file.path))
            if url is not None:
                _upload(file.path, url)
                file.path = url
        if item.error is not None:
            item.error = _named(item.error, staged, source, task)
    item.source, item.kept = task.source, []
    return item


def _fetch(url: str, folder: Path) -> Path:
    fsspec = _fsspec()
    local = folder / "input" / posixpath.basename(url.split("://", 1)[1])
    local.parent.mkdir(parents=True)
    try:
        file_system, path = fsspec.core.url_to_fs(url)
        file_system.get(path, str(local))
    except (OSError, ValueError) as exc:
        raise InputError(f"{url}: cannot be read ({exc})") from exc
    return local


def _stage(url: str, folder: Path) -> Path:
    """Where a URL output is made on this worker; an output already there is copied, to be checked as a local one."""
    fsspec = _fsspec()
    folder.mkdir(parents=True)
    local = folder / posixpath.basename(url)
    file_system, path = fsspec.core.url_to_fs(url)
    if file_system.exists(path):
        file_system.get(path, str(local))
    return local


def _upload(local: Path, url: str) -> None:
    file_system, path = _fsspec().core.url_to_fs(url)
    try:
        file_system.makedirs(posixpath.dirname(path), exist_ok=True)
        file_system.put(str(local), path)
    except (OSError, ValueError) as exc:
        raise OutputError(f"{url}: cannot be written ({exc})") from exc


def _named(error: VipError, staged: dict[str, str], source: Path, task: Task) -> VipError:
    """``error`` with the worker's temporary paths replaced by the URLs the user gave."""
    message = str(error).replace(str(source), task.source) if is_url(task.source) else str(error)
    for local, url in staged.items():
        message = message.replace(local, url)
    return error if message == str(error) else type(error)(message)


# ---------------------------------------------------------------------------------------------- on the client


def plan_tasks(inputs: Sequence[str | Path], job: OutpaintJob | EditJob) -> tuple[list[Task], list[tuple[str, str]]]:
    """The run's tasks (one per input found, its outputs named as a one-machine run names them) and the inputs that
    named no image (with why). Local specs are found as ``find_inputs`` finds them, URLs through fsspec; local paths
    in tasks are absolute (a worker runs in its own folder)."""
    tasks, missing, _ = _plan(inputs, job)
    return tasks, missing


def _plan(inputs: Sequence[str | Path], job: OutpaintJob | EditJob):
    """``plan_tasks``, and each absolute path of the tasks mapped to the path as the user would see it."""
    if isinstance(job, OutpaintJob):
        kinds = output_kinds(preview=job.preview, num_images=job.generation.num_images)
    else:
        kinds = edit_kinds(job.edit.num_images)
    found: list[InputImage] = []
    sources: list[str] = []
    missing: list[tuple[str, str]] = []
    for spec in map(str, inputs):
        if is_url(spec):
            urls, problem = _find_urls(spec)
            found += [InputImage(path=Path(relative), relative=Path(relative)) for _, relative in urls]
            sources += [url for url, _ in urls]
        else:
            local, problems = find_inputs([str(_local(spec))])
            found += local
            sources += [str(image.path) for image in local]
            problem = problems[0][1] if problems else None
        if problem is not None:
            missing.append((spec, problem))
    output = str(_local(str(job.output))) if job.output is not None and not is_url(job.output) else job.output
    if output is not None and is_url(output):
        root = Path("/vip-output")  # plan as a local folder, then put the URL in its place
        plans = [
            [f"{str(output).rstrip('/')}/{path.relative_to(root).as_posix()}" for path in plan]
            for plan in plan_outputs(found, root, kinds)
        ]
    else:
        if any(map(is_url, sources)) and output is None:
            raise OptionError("inputs given as URLs need an `output` folder (local or a URL) for their results")
        plans = [[str(path) for path in plan] for plan in plan_outputs(found, output, kinds)]
    given: dict[str, str] = {}

    def absolute(text: str) -> str:
        if is_url(text):
            return text
        path = str(Path(text).absolute())
        given[path] = text
        return path

    tasks = [
        Task(absolute(source), image.relative.as_posix(), tuple(map(absolute, plan)), job)
        for source, image, plan in zip(sources, found, plans)
    ]
    return tasks, missing, given


def _find_urls(spec: str) -> tuple[list[tuple[str, str]], str | None]:
    """(URL, relative path) of the images a URL names (a file, a folder searched recursively, a pattern), sorted,
    hidden entries skipped; and why it names none."""
    file_system, path = _fsspec().core.url_to_fs(spec)
    try:
        if file_system.isdir(path):
            base, names = path, file_system.find(path)
        elif glob.has_magic(path):
            fixed = path.split("/")
            index = next(index for index, part in enumerate(fixed) if glob.has_magic(part))
            base, names = "/".join(fixed[:index]), file_system.glob(path)
        elif file_system.isfile(path):
            base, names = posixpath.dirname(path), [path]
        else:
            return [], "no such file or folder"
    except (OSError, ValueError) as exc:
        return [], f"cannot be listed ({exc})"
    images = []
    for name in sorted(names):
        relative = posixpath.relpath(name, base) if base else name
        if is_image_name(name) and not any(part.startswith(".") for part in relative.split("/")):
            images.append((file_system.unstrip_protocol(name), relative))
    return images, (None if images else "names no images")


def _check_task(task: Task) -> VipError | str | None:
    """What a one-machine run checks before any work: "finished" (``skip_existing``, made by this job), why the
    outputs cannot be written, or None."""
    job = task.job
    with tempfile.TemporaryDirectory(prefix="vip-check-") as scratch:
        local = [
            _stage(url, Path(scratch) / str(index)) if is_url(url) else _local(url)
            for index, url in enumerate(task.destinations)
        ]
        try:
            if job.skip_existing:
                record = outpaint_record(job) if isinstance(job, OutpaintJob) else edit_record(job)
                if outputs_finished(local, record, job.overwrite):
                    return "finished"
                return None
            if any(map(is_url, task.destinations)):
                there = [url for url, path in zip(task.destinations, local) if path.exists()]
                if there and not job.overwrite:
                    return OutputError(f"{there[0]} exists; pass `overwrite=True` to replace it")
                return None
            return check_destinations(local, job.overwrite)
        except VipError as exc:
            return exc


def run_on_dask(
    inputs: Sequence[str | Path],
    job: OutpaintJob | EditJob,
    *,
    scheduler: str | Any,
    on_item: ItemCallback | None = None,
    on_note: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> BatchRun:
    """Outpaint (``OutpaintJob``) or edit (``EditJob``) files, folders, glob patterns and fsspec URLs on a Dask
    cluster, with the results, names, checks and failures of ``outpaint_images`` / ``edit_images``.

    ``scheduler``: its address (``tcp://host:8786``) or a ``distributed.Client`` already connected (left open).
    ``on_item(item, done, total)`` as each input finishes, in the order they finish: inputs that name no image,
    then those skipped or refused before any work, then the cluster's. ``on_note(message)`` once per run for what
    it chose not to do (the ``run_notes`` of the first input that brings some back: the detail pass on a CPU
    worker), before that input's ``on_item``, as ``outpaint_images`` says them (default: logged);
    ``on_warning(message)`` once for each distinct warning the workers bring back for the whole run (no captioner
    on a worker: keywords instead), before the ``on_item`` of the input that brought it (default: logged). Raises
    ``OptionError`` for bad settings or a scheduler that cannot be reached, ``ModelNotFoundError`` /
    ``ModelLoadError`` when a worker cannot load the model (the tasks not started are cancelled; the files written
    until then stay).
    """
    (check_job if isinstance(job, OutpaintJob) else check_edit_job)(job)
    distributed = _distributed()
    tasks, missing, given = _plan(inputs, job)
    run = BatchRun()
    total = len(tasks) + len(missing)
    note = on_note or (lambda message: logger.info("%s", message))
    warn = on_warning or (lambda message: logger.warning("%s", message))
    warned: set[str] = set()

    def report(item: BatchItem) -> None:
        for message in item.run_warnings:  # each worker that missed its captioner says so: once for the run
            if message not in warned:
                warned.add(message)
                warn(message)
        if item.run_notes and not any(done.run_notes for done in run.items):  # they hold for the run: said once
            for message in item.run_notes:
                note(message)
        run.items.append(item)
        if on_item is not None:
            on_item(item, len(run.items), total)

    for spec, reason in missing:
        report(BatchItem(source=spec, status="missing", error=InputError(f"{spec}: {reason}")))
    todo = []
    for task in tasks:
        problem = _check_task(task)
        if problem == "finished":
            kept = [url if is_url(url) else Path(given.get(url, url)) for url in task.destinations]
            report(BatchItem(source=given.get(task.source, task.source), status="skipped", kept=kept))
        elif problem is not None:
            report(BatchItem(source=given.get(task.source, task.source), status="failed", error=problem))
        else:  # on the cluster, a task run again finds the files its first try wrote (they record the job)
            todo.append(replace(task, job=replace(task.job, skip_existing=not task.job.overwrite)))
    if not todo:
        return run
    client = _connect(distributed, scheduler) if isinstance(scheduler, str) else scheduler
    try:
        workers = client.scheduler_info().get("workers", {}).values()
        gpus = any((worker.get("resources") or {}).get("GPU") for worker in workers)
        run_id = uuid.uuid4().hex[:8]
        futures = {
            client.submit(
                process_task, task, key=f"vip-{run_id}-{index}", resources={"GPU": 1} if gpus else None, pure=False
            ): task
            for index, task in enumerate(todo)
        }
        for future in distributed.as_completed(futures):
            task = futures[future]
            try:
                item = future.result()
            except STOPS_THE_RUN:
                client.cancel(list(futures))
                raise
            except distributed.KilledWorker as exc:
                item = BatchItem(source=task.source, status="failed", error=VipError(f"{task.source}: {_died(exc)}"))
            except VipError as exc:  # the input's own (a URL that cannot be read or written)
                item = BatchItem(source=task.source, status="failed", error=exc)
            report(_as_given(item, given))
    finally:
        if client is not scheduler:
            client.close()
    return run


def _as_given(item: BatchItem, given: dict[str, str]) -> BatchItem:
    """``item`` with the paths as the user gave them (relative where they were), in its files and message."""
    for file in item.written:
        file.path = Path(given[str(file.path)]) if str(file.path) in given else file.path
    if item.error is not None and item.source in given:
        item.error = type(item.error)(str(item.error).replace(item.source, given[item.source]))
    item.source = given.get(item.source, item.source)
    return item


def _connect(distributed, address: str) -> Any:
    try:
        return distributed.Client(address, timeout="20s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise OptionError(f"`dask` {address}: no Dask scheduler answers there ({exc})") from None


def _died(exc: BaseException) -> str:
    return f"the workers running it died each time ({str(exc).splitlines()[0][:200]})"


# ---------------------------------------------------------------------------------------------- captioning


@dataclass(frozen=True)
class CaptionTask:
    """One image of a ``vip caption`` run, as a worker gets it (the options of ``caption_images``)."""

    path: Path  # the image (every worker must see it at this path)
    image_key: str  # its name in the JSON Lines file
    spec: Any  # the ``CaptionerSpec`` to load (once per worker)
    for_training: bool = False
    ratio: float = 2.0
    keywords: str = ""
    use_cache: bool = True


def caption_task(task: CaptionTask) -> Any:
    """Caption one image on this worker with its kept captioner (``captioning.batch.caption_one``)."""
    from vipcli_model.captioning.batch import CaptionItem, LazyCaptioner, caption_one
    from vipcli_model.captioning.files import CaptionCache
    from vipcli_model.captioning.text import default_clip_tokenizer

    key = repr(("caption", task.spec))
    with _WORKER_LOCK:
        if key not in _WORKER_MODELS:
            _WORKER_MODELS[key] = (threading.Lock(), LazyCaptioner(task.spec, None))
        lock, captioner = _WORKER_MODELS[key]
    item = CaptionItem(path=Path(task.path), image_key=task.image_key, status="captioned")
    with lock:
        if not hasattr(captioner, "tokenizer"):
            captioner.tokenizer = default_clip_tokenizer()
        options = {"for_training": task.for_training, "ratio": task.ratio, "keywords": task.keywords}
        cache = CaptionCache() if task.use_cache else None
        return caption_one(item, captioner, **options, tokenizer=captioner.tokenizer, cache=cache)


def caption_on_dask(
    paths: Sequence[Path],
    spec: Any,
    *,
    scheduler: str | Any,
    for_training: bool = False,
    ratio: float | str = 2.0,
    keywords: str = "",
    jsonl: Path | None = None,
    data_root: Path | None = None,
    use_cache: bool = True,
    on_item: Any = None,
) -> Any:
    """``caption_images`` on a Dask cluster: each worker loads the captioner once and captions the images it gets;
    this process appends each record to ``jsonl`` as its image finishes (images already there are skipped, as a
    local run skips them). ``on_item(item, done, total)`` in the order images finish. A captioner that cannot be had
    raises (``CaptionerError``, ``ModelNotFoundError``...): the tasks not started are cancelled, the records written
    so far stay."""
    from vipcli_model.captioning.batch import CaptionItem, CaptionRun, check_caption_options, data_root_for
    from vipcli_model.captioning.files import CaptionJsonlWriter, jsonl_record, read_caption_jsonl
    from vipcli_model.files import image_key

    ratio = check_caption_options(for_training=for_training, ratio=ratio, keywords=keywords, jsonl=jsonl)
    distributed = _distributed()
    data_root = Path(data_root).resolve() if data_root is not None else data_root_for(paths)
    done_before = read_caption_jsonl(jsonl) if jsonl is not None else {}
    run = CaptionRun()

    def report(item: Any) -> None:
        run.items.append(item)
        if on_item is not None:
            on_item(item, len(run.items), len(paths))

    tasks, given = [], {Path(path).absolute(): Path(path) for path in paths}
    for path in paths:
        key = image_key(path, data_root)
        if key in done_before:
            report(CaptionItem(path=Path(path), image_key=key, status="skipped"))
        else:
            options = {"for_training": for_training, "ratio": ratio, "keywords": keywords, "use_cache": use_cache}
            tasks.append(CaptionTask(Path(path).absolute(), key, spec, **options))
    if not tasks:
        return run
    client = _connect(distributed, scheduler) if isinstance(scheduler, str) else scheduler
    writer = CaptionJsonlWriter(jsonl) if jsonl is not None else None
    try:
        run_id = uuid.uuid4().hex[:8]
        futures = {
            client.submit(caption_task, task, key=f"vip-caption-{run_id}-{index}", pure=False): task
            for index, task in enumerate(tasks)
        }
        for future in distributed.as_completed(futures):
            task = futures[future]
            try:
                item = future.result()
            except distributed.KilledWorker as exc:
                item = CaptionItem(path=task.path, image_key=task.image_key, status="failed", error=_died(exc))
            except Exception:
                client.cancel(list(futures))
                raise
            item.path = given[task.path]
            if writer is not None and item.result is not None:
                writer.write(jsonl_record(item.image_key, item.result))
            report(item)
    finally:
        if writer is not None:
            writer.close()
        if client is not scheduler:
            client.close()
    return run
