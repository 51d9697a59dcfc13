"""How long runs look in a terminal: the `vip eval` results table, the `vip train` data report and live progress.

Rich only; the commands call these with what the library returned or reported.
"""

from __future__ import annotations

import math

from .console import download_bars, err_console, out_console, progress, warn
from .options import flag_message


def print_eval_report(report, json_out: bool) -> bool:
    """`vip eval`'s results (the table, or results.json with --json), notes and skipped images; True when any was
    skipped."""
    if json_out:
        out_console.print_json(report.results_path.read_text(encoding="utf-8"))
    else:
        out_console.print(results_table(report.results))
    for note in report.results.get("notes", []):
        plain(f"note: {flag_message(note, 'eval')}")
    plain(f"wrote {report.results_path} and {report.per_image_path.name}")
    skipped = report.results.get("skipped") or []
    if skipped:
        warn(f"{len(skipped)} image(s) skipped (see 'skipped' in {report.results_path.name}):")
        for item in skipped[:10]:
            where = f"{item['setting']}: " if item.get("setting") else ""
            plain(f"  {where}{with_name(item['image'], flag_message(item['reason'], 'eval'))}")
        if len(skipped) > 10:
            plain(f"  ... and {len(skipped) - 10} more")
    return bool(skipped)


def with_name(image: str, reason: str) -> str:
    """A reason that names its image."""
    return reason if image in reason else f"{image}: {reason}"


def plain(message: str) -> None:
    """A message on stderr, printed as is (file names may hold [brackets] that Rich would read as markup)."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


ROWS = (
    ("images", "images", "{:d}"),
    ("FID", "fid", "{:.2f}"),
    ("KID", ("kid_mean", "kid_std"), "{:.4f} ± {:.4f}"),
    ("IS", ("is_mean", "is_std"), "{:.2f} ± {:.2f}"),
    ("IS (ground truth)", ("gt_is_mean", "gt_is_std"), "{:.2f} ± {:.2f}"),
    ("PSNR known (dB)", "psnr_known", "{:.2f}"),
    ("PSNR generated (dB)", "psnr_generated", "{:.2f}"),
    ("PSNR whole (dB)", "psnr_whole", "{:.2f}"),
    ("SSIM known", "ssim_known", "{:.4f}"),
    ("SSIM whole", "ssim_whole", "{:.4f}"),
    ("LPIPS known", "lpips_known", "{:.4f}"),
    ("LPIPS whole", "lpips_whole", "{:.4f}"),
    ("CLIP score", "clip_score", "{:.2f}"),
)


def results_table(results: dict):
    """Metrics as rows, prompt settings as columns (fits a narrow terminal)."""
    from rich.markup import escape
    from rich.table import Table

    protocol = results["protocol"]
    title = (
        f"vip eval: {protocol['name']} protocol, {protocol['size'][0]}x{protocol['size'][1]}, "
        f"center {protocol['known_size'][0]}x{protocol['known_size'][1]} known ({protocol['area_factor']:g}x area)"
    )
    table = Table(title=escape(title), title_justify="left")
    table.add_column("metric")
    names = list(results["settings"])
    for name in names:
        table.add_column(escape(name), justify="right")
    for label, keys, pattern in ROWS:
        cells = [_cell(results["settings"][name], keys, pattern) for name in names]
        if all(cell == "-" for cell in cells):
            continue
        table.add_row(label, *cells)
    return table


def _cell(summary: dict, keys, pattern: str) -> str:
    keys = (keys,) if isinstance(keys, str) else keys
    values = [summary.get(key) for key in keys]
    if any(value is None for value in values):
        return "-"
    if any(isinstance(value, float) and math.isinf(value) for value in values):
        return "inf (identical)"
    return pattern.format(*values)


def print_training_report(report: dict, console) -> None:
    """The data summary: counts, broken files, caption coverage."""
    from rich.markup import escape

    captions = report["captions"] or "none (every image trains unconditionally)"
    console.print(f"data: {escape(report['data_dir'])}", highlight=False)
    console.print(f"captions: {escape(str(captions))}", highlight=False)
    console.print(
        f"images: {report['images']} usable, {report['captioned']} captioned, "
        f"{report['uncaptioned']} without caption (trained unconditionally), {len(report['broken'])} broken (skipped)",
        highlight=False,
    )
    if report["upscaled"]:
        console.print(
            f"note: {report['upscaled']} image(s) are smaller than the training resolution and get upscaled",
            highlight=False,
        )
    for item in report["broken"]:
        console.print(f"  [red]broken[/] {escape(item['image'])}: {escape(item['reason'])}", highlight=False)
    missing = report["captions_without_image"]
    if missing and not report["captioned"]:
        console.print(
            "  [yellow]no caption matches an image:[/] captions name images by their path relative to DATA_DIR "
            "(as `vip caption DATA_DIR --for-training --jsonl ...` writes them)",
            highlight=False,
        )
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        console.print(
            f"  [yellow]{len(missing)} caption(s) name images not in the folder:[/] {escape(shown)}", highlight=False
        )


class TrainingRenderer:
    """Turns the recipe's events into a live progress line (terminal) or periodic plain lines (logs)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        self.live = err_console.is_terminal
        self.progress = progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]}  ETA {task.fields[eta]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.task = None
        self.scan_task = None
        self.every = 1

    def __enter__(self) -> TrainingRenderer:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.__exit__(*exc_info)

    def __call__(self, event) -> None:
        from rich.markup import escape

        console = self.progress.console
        if event.kind == "scan":
            done, total = event.metrics["done"], event.metrics["total"]
            if self.scan_task is None:
                self.scan_task = self.progress.add_task(
                    "checking images", total=total, loss="-", lr="-", speed="", eta=""
                )
            self.progress.update(self.scan_task, completed=done)
        elif event.kind == "start":
            if self.scan_task is not None:
                self.progress.remove_task(self.scan_task)
            print_training_report(event.metrics, console)
            metrics = event.metrics
            resumed = f", resumed from {metrics['resumed_from']}" if metrics.get("resumed_from") else ""
            console.print(
                f"training {metrics['trainable_parameters']:,} parameters on {metrics['num_processes']} process(es) "
                f"({metrics['device']}, mixed precision {metrics['mixed_precision']}), "
                f"effective batch {metrics['effective_batch']}{resumed}",
                highlight=False,
            )
            self.every = max(1, event.max_steps // 20)
            self.task = self.progress.add_task(
                "train", total=event.max_steps, completed=event.step, loss="-", lr="-", speed="", eta="-"
            )
        elif event.kind == "step":
            metrics = event.metrics
            speed = metrics.get("steps_per_second") or 0.0
            fields = {
                "loss": f"{metrics['loss']:.4f}",
                "lr": f"{metrics['lr']:.2e}",
                "speed": f"{speed:.2f} it/s" if speed >= 1 else (f"{1 / speed:.1f} s/it" if speed > 0 else ""),
                "eta": duration(metrics.get("eta_seconds") or 0),
            }
            self.progress.update(self.task, completed=event.step, **fields)
            if not self.live and (event.step % self.every == 0 or event.step == event.max_steps):
                console.print(
                    f"step {event.step}/{event.max_steps}  loss {fields['loss']}  lr {fields['lr']}  {fields['speed']} "
                    f" ETA {fields['eta']}",
                    highlight=False,
                )
        elif event.kind == "checkpoint":
            console.print(f"checkpoint {escape(str(event.path))}", highlight=False)
        elif event.kind == "validation":
            console.print(f"validation outpaint {escape(str(event.path))}", highlight=False)
        elif event.kind == "note":
            console.print(f"[yellow]note:[/] {escape(flag_message(event.message, 'train'))}", highlight=False)
        elif event.kind == "done":
            console.print(f"wrote {escape(str(event.path))}", highlight=False)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class StageProgress:
    """One bar per stage, fed by a library callback ``(stage, done, total)`` (`vip eval`)."""

    def __enter__(self):
        self.display = progress()
        self.display.__enter__()
        self.tasks: dict[str, int] = {}
        return self.update

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.display.add_task(stage, total=total)
        self.display.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc) -> None:
        self.display.__exit__(*exc)


def run_and_render(images: list[str], job, json_out: bool, *, dask: str | None, run_locally, wrote_suffix=None):
    """A run over many images (`vip outpaint`, `vip edit`), shown as it goes, then its summary and exit status.

    With ``dask`` (a scheduler address) the job's inputs go to the cluster's workers (``run_on_dask``); else
    ``run_locally(view)`` is the library call, given the ``RunRenderer`` whose callbacks it passes on.
    """
    with progress() as display:
        view = RunRenderer(display, len(images), json_out, wrote_suffix=wrote_suffix)
        try:
            if dask:  # the same run, its inputs handed to the cluster's workers
                from vipcli_model.distributed import run_on_dask

                run = run_on_dask(
                    images, job, scheduler=dask, on_item=view.on_item, on_note=view.on_note, on_warning=view.on_warning
                )
            else:
                run = run_locally(view)
        except KeyboardInterrupt:
            raise view.interrupted() from None
    view.finish(run)


class RunRenderer:
    """Live progress and per-input lines of a run over many images (`vip outpaint`, `vip edit`).

    Its ``on_*`` methods and ``download_progress`` are the library run's callbacks (``callbacks``: those every run
    takes); ``finish`` prints the summary and exits with the batch rule (the code the failures share, else 1).
    ``wrote_suffix(file)`` adds text after a written file's path.
    """

    def __init__(self, display, total: int, json_out: bool, wrote_suffix=None) -> None:
        self.display, self.json_out, self.wrote_suffix = display, json_out, wrote_suffix
        self.tasks: dict = {"images": display.add_task("images", total=total)}
        self.finished: list = []  # what an interrupted run reports as done
        self.download_progress = download_bars(display)  # a model's first download, file by file

    @property
    def callbacks(self) -> dict:
        """The callbacks of ``outpaint_images`` and ``edit_images`` alike."""
        return {
            "on_item": self.on_item,
            "on_loading": self.on_loading,
            "on_step": self.on_step,
            "download_progress": self.download_progress,
        }

    def on_warning(self, message: str) -> None:
        """What concerns the whole run (a captioner missing), named in flag terms."""
        from rich.markup import escape

        warn(escape(flag_message(message)))

    def on_note(self, message: str) -> None:
        """What the run chose not to do (the detail pass on a CPU), once per run."""
        from rich.markup import escape

        from .console import note

        note(escape(flag_message(message)))

    def _drop(self, *keys: str) -> None:
        for key in keys:
            if key in self.tasks:
                self.display.remove_task(self.tasks.pop(key))

    def on_loading(self, what: str) -> None:
        from .console import quiet_third_party

        quiet_third_party()
        self._drop("loading")  # one model at a time: the one before is loaded
        self.tasks["loading"] = self.display.add_task(f"loading {what}", total=None)

    def on_step(self, path, done: int, total: int) -> None:
        self._drop("loading")
        if "steps" not in self.tasks:
            self.tasks["steps"] = self.display.add_task(f"  {path.name}", total=total)
        self.display.update(self.tasks["steps"], completed=done, total=total)

    def on_tile(self, path, done: int, total: int) -> None:
        """The detail pass's tiles, under the image's steps."""
        if "tiles" not in self.tasks:
            self.tasks["tiles"] = self.display.add_task(f"  {path.name}: detail tiles", total=total)
        self.display.update(self.tasks["tiles"], completed=done, total=total)

    def on_item(self, item, done: int, total: int) -> None:
        self._drop("loading", "steps", "tiles")
        self.finished.append(item)
        if total > 1 or item.status in ("written", "skipped"):  # a single failed input: one line, in finish()
            self.render(item)
        self.display.update(self.tasks["images"], completed=done, total=total)

    def interrupted(self) -> KeyboardInterrupt:
        written = sum(len(item.written) for item in self.finished)
        return KeyboardInterrupt(
            f"{len(self.finished)} input(s) finished, {written} file(s) written and kept; the rest was not started"
        )

    def render(self, item) -> None:
        """One input's outcome: data on stdout, messages on stderr."""
        import json

        from rich.markup import escape

        if item.status == "missing":
            err_console.print(f"[red]skipped[/] {escape(item_message(item))}", highlight=False)
            return
        if item.status == "skipped":  # done before: counted in the summary, one line each only in --json
            for path in item.kept if self.json_out else ():
                out_console.print_json(json.dumps({"path": str(path), "skipped": True}), indent=None)
            return
        for note in item.notes:
            warn(escape(f"{item.source}: {flag_message(note)}"))
        source = item.written[0].metadata.get("prompt_source") if item.written and not self.json_out else None
        if isinstance(source, dict) and source.get("source") == "captioner":  # what the captioner wrote, once
            prompts = item.written[0].metadata["prompts"]
            for region in ("center", "surrounding"):
                err_console.print(f"  {region.title()}: {escape(prompts[region])}", highlight=False, soft_wrap=True)
        for file in item.written:
            if self.json_out:
                out_console.print_json(json.dumps({"path": str(file.path), **file.metadata}), indent=None)
            else:
                suffix = self.wrote_suffix(file) if self.wrote_suffix else _preview_suffix(file, item.written[0])
                err_console.print(f"[green]wrote[/] {escape(str(file.path) + suffix)}", highlight=False)
        if item.status == "failed":
            err_console.print(f"[red]failed[/] {escape(item_message(item))}", highlight=False)

    def finish(self, run) -> None:
        """The summary line; exits non-zero when any input failed (one line for a single failed input)."""
        import typer
        from rich.markup import escape

        from vipcli_model.errors import batch_exit_code

        written, failures = run.written, run.failures
        skipped = sum(1 for item in run.items if item.status == "skipped")
        skipped_text = f", {skipped} input(s) skipped (done before)" if skipped else ""
        code = batch_exit_code(item.error.exit_code for item in failures)
        if not getattr(run, "main_process", True):  # another process of a multi-process run: the main one reports
            if failures:
                raise typer.Exit(code=code)
            return
        if len(run.items) == 1 and failures:
            for note in failures[0].notes:
                warn(escape(f"{failures[0].source}: {note}"))
            err_console.print(
                f"[bold red]error:[/] {escape(item_message(failures[0]))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(code=code)
        if failures:
            err_console.print(
                f"[bold]{len(written)} written{skipped_text}, {len(failures)} of {len(run.items)} input(s) failed[/]",
                highlight=False,
            )
            raise typer.Exit(code=code)
        if not self.json_out:
            err_console.print(f"[green]done:[/] {len(written)} file(s) written{skipped_text}", highlight=False)


def _preview_suffix(file, first) -> str:
    """After a `--preview` run's first file (the canvas): the canvas size and where the photo sits on it."""
    metadata = file.metadata
    if file is not first or "image_box" not in metadata or "seed" in metadata:
        return ""
    (width, height), (left, top, right, bottom) = metadata["canvas_size"], metadata["image_box"]
    return f" ({width}x{height} canvas; the photo at x {left}-{right}, y {top}-{bottom})"


def item_message(item) -> str:
    """A failed or skipped input's one line, naming the input, in flag terms."""
    return with_name(item.source, flag_message(str(item.error)))
