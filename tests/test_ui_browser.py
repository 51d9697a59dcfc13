"""`vip ui` in a real browser (Playwright driving headless Chromium) and through `gradio_client`.

One app serves the whole module in this process, on 127.0.0.1, with the tiny inpainting model saved to a folder (the
same loading code as `--model DIR`). Each flow keeps a screenshot per step in its tmp_path. Without Chromium (or
Playwright, or Gradio) the browser tests skip, unless VIP_REQUIRE_BROWSER=1 (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import pixels, run_vip
from PIL import Image

from vipcli_model.images.io import read_metadata

REQUIRED = os.environ.get("VIP_REQUIRE_BROWSER", "") not in ("", "0")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SEED = 7  # every run of the flows below, and the CLI run they are compared with
STEPS = 3  # each run's denoising steps (the tiny model: milliseconds each)
PHOTO_SIZE = (96, 64)
FIELDS_NOT_COMPARED = ("created", "source")  # when and from which path: the only differences from the CLI's file


def _missing(what: str) -> None:
    if REQUIRED:
        pytest.fail(f"VIP_REQUIRE_BROWSER=1 but {what} is missing")
    pytest.skip(f"{what} is missing")


try:
    import gradio  # noqa: F401
    from gradio_client import Client, handle_file
except ImportError:
    _missing("gradio / gradio_client (pip install 'vip-outpaint[ui]')")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Served:
    url: str
    output: Path  # where the app saves results
    model: Path  # the tiny inpainting model
    photo: Path
    text: Path  # a text file
    session: Any  # the Outpaint tab's session
    edits: Any  # the Edit tab's session


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    import skimage.data
    from tiny_models import save_tiny_ip2p_model

    from vipcli.ui.app import build_app
    from vipcli_model.editing.session import EditSession
    from vipcli_model.outpainting.session import OutpaintSession

    root = tmp_path_factory.mktemp("ui")
    photo = root / "coffee.png"
    Image.fromarray(skimage.data.coffee()).resize(PHOTO_SIZE).save(photo)
    text = root / "notes.txt"
    text.write_text("not a photo")
    uploads = Path(tempfile.mkdtemp(prefix="vip-ui-test-"))
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)
    session, edits = OutpaintSession(root / "out"), EditSession(root / "out")
    edits.test_model = save_tiny_ip2p_model(root / "ip2p")
    app = build_app(session, edit_session=edits, model=str(tiny_model_dir), device="cpu")
    port = _free_port()
    app.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        allowed_paths=[str(root / "out")],
    )
    yield Served(f"http://127.0.0.1:{port}/", root / "out", tiny_model_dir, photo, text, session, edits)
    app.close()
    session.release()
    edits.release()
    shutil.rmtree(uploads, ignore_errors=True)
    if previous is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (pip install playwright)")
    if CHROMIUM is None:
        _missing("chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser, served, tmp_path):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 1400})
    opened = context.new_page()
    opened.set_default_timeout(60_000)
    opened.goto(served.url)
    opened.wait_for_selector("#run")
    shots = iter(range(1, 100))
    opened.shot = lambda name: opened.screenshot(path=str(tmp_path / f"{next(shots):02d}-{name}.png"), full_page=True)
    yield opened
    context.close()


def _fill(page, elem_id: str, value: str) -> None:
    field = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    field.wait_for(state="visible")  # inside an accordion that is still opening, a fill can be lost
    for _ in range(3):
        field.fill(value)
        field.press("Enter")
        field.blur()
        if field.input_value() == value:
            break
    assert field.input_value() == value, (elem_id, field.input_value())


def _status(page, at: str = "status") -> str:
    return page.locator(f"#{at}").inner_text()


def _wait_status(page, *words: str, at: str = "status") -> str:
    page.wait_for_function(
        "([at, words]) => words.some(word => (document.querySelector('#' + at)?.innerText || '').includes(word))",
        arg=[at, list(words)],
    )
    return _status(page, at)


def _download(page, at: str, folder: Path) -> Path:
    """The first file of the File component ``at``, downloaded as the browser does."""
    with page.expect_download() as download:
        page.locator(f"#{at} a").first.click()
    saved = folder / download.value.suggested_filename
    download.value.save_as(saved)
    return saved


def _advanced(page, steps: int, seed: int = SEED, feather: int = 0) -> None:
    page.get_by_text("Advanced").click()
    _fill(page, "steps", str(steps))
    _fill(page, "seed", str(seed))
    _fill(page, "feather", str(feather))


def _cli_words(served, output: Path) -> list[str]:
    """The `vip outpaint` command the app gives for its runs below (STEPS, SEED, ratio 2x, feather 0, no prompts)."""
    return [
        "outpaint",
        served.photo.name,
        "--ratio",
        "2x",
        "--no-caption",
        "--steps",
        str(STEPS),
        "--seed",
        str(SEED),
    ] + ["--feather", "0", "--model", str(served.model), "--device", "cpu", "-o", str(output)]


@pytest.fixture(scope="module")
def cli_file(served):
    """The CLI's file for the same settings, made in the background while the browser works."""
    output = served.output.parent / "cli"
    words = _cli_words(served, output)
    words[1] = str(served.photo)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_vip, *words)

        def result() -> Path:
            finished = running.result()
            assert finished.returncode == 0, finished.stderr
            return output / "coffee_outpaint.png"

        yield result


def _check_against_cli(result: Path, cli_file: Path, photo: Path) -> None:
    """The result has the photo's pixels where it was (feather 0), and the pixels and metadata of the CLI's file."""
    ui_meta, cli_meta = read_metadata(result), read_metadata(cli_file)
    assert ui_meta["parameters"] == cli_meta["parameters"]  # the A1111 text
    ui_meta, cli_meta = ui_meta["vip"], cli_meta["vip"]
    for field in FIELDS_NOT_COMPARED:
        ui_meta.pop(field), cli_meta.pop(field)
    # the job as given: the app asks the captioner when no prompt is given, as `vip outpaint` does; none is cached
    # here, so both run without prompts, which the app's command line says with --no-caption
    assert ui_meta["job"].pop("caption") is True and cli_meta["job"].pop("caption") is False
    assert ui_meta == cli_meta
    assert np.array_equal(pixels(result), pixels(cli_file))
    left, top, right, bottom = ui_meta["image_box"]
    assert np.array_equal(pixels(result)[top:bottom, left:right], pixels(photo))


@pytest.mark.slow
def test_browser_preview_run_download(page, served, cli_file, tmp_path):
    page.locator("#photo input[type=file]").set_input_files(str(served.photo))
    page.wait_for_function("() => document.querySelector('#canvas-info')?.innerText.includes('Canvas 144x96')")
    page.wait_for_function("() => document.querySelector('#preview img')?.naturalWidth === 144")  # ratio 1.5x
    page.shot("uploaded")
    _fill(page, "ratio", "2x")
    page.wait_for_function("() => document.querySelector('#canvas-info')?.innerText.includes('Canvas 192x128')")
    page.wait_for_function("() => document.querySelector('#preview img')?.naturalWidth === 192")
    page.shot("ratio-2x")
    _advanced(page, STEPS)
    page.locator("#run").click()
    status = _wait_status(page, "Done", "error")
    assert "Done" in status, status
    page.shot("done")
    saved = _download(page, "files", tmp_path)
    written = served.output.rglob("coffee_outpaint.png")
    assert saved.read_bytes() in [path.read_bytes() for path in written]  # the file the run saved, byte for byte
    assert Image.open(saved).size == (192, 128)
    command = page.locator("#command .cm-content").inner_text().strip()
    assert shlex.split(command) == ["vip", *_cli_words(served, served.output)]
    _check_against_cli(saved, cli_file(), served.photo)


@pytest.mark.slow
def test_browser_cancel(page, served):
    page.locator("#photo input[type=file]").set_input_files(str(served.photo))
    page.wait_for_function("() => document.querySelector('#canvas-info')?.innerText.includes('Canvas')")
    _advanced(page, steps=500)
    page.locator("#run").click()
    _wait_status(page, "Step")
    page.shot("running")
    page.locator("#cancel").click()
    status = _wait_status(page, "cancelled at step")
    assert "error" not in status.lower() and "Traceback" not in page.content()
    page.shot("cancelled")


@pytest.mark.slow
def test_browser_text_file_then_photo(page, served):
    page.locator("#photo input[type=file]").set_input_files(str(served.text))
    page.wait_for_function("() => document.querySelector('#canvas-info')?.innerText.includes('not an image')")
    page.shot("text-file")
    page.locator("#run").click()
    status = _wait_status(page, "not an image")
    assert status.strip().count("\n") == 0 and "Traceback" not in page.content()
    page.shot("text-file-run")
    page.locator("#photo button[aria-label*='Clear'], #photo button[aria-label*='Remove']").first.click()
    page.locator("#photo input[type=file]").set_input_files(str(served.photo))
    page.wait_for_function("() => document.querySelector('#canvas-info')?.innerText.includes('Canvas')")
    _advanced(page, STEPS)
    page.locator("#run").click()
    assert "Done" in _wait_status(page, "Done", "error")
    page.shot("photo-after-text")


def _controls(served, photo: Path, **changes) -> dict:
    values = dict(photo=handle_file(str(photo)), ratio="2x", model=str(served.model), steps=STEPS, seed=SEED, feather=0)
    values.update(changes)
    return values


@pytest.mark.slow
def test_gradio_client_flows(served, cli_file, tmp_path):
    client = Client(served.url, verbose=False, download_files=str(tmp_path / "downloads"))
    # a text file: one line, and the app goes on
    *_, status, _command, _meta = client.predict(**_controls(served, served.text), api_name="/outpaint")
    assert "not an image" in status and "\n" not in status.strip()
    live, gallery, files, status, command, metadata = client.predict(
        **_controls(served, served.photo), api_name="/outpaint"
    )
    assert status.startswith("Done"), status
    downloaded = Path(files[0])
    assert downloaded.read_bytes() in [path.read_bytes() for path in served.output.rglob("coffee_outpaint.png")]
    assert read_metadata(downloaded)["vip"] == json.loads(json.dumps(metadata))
    assert shlex.split(command) == ["vip", *_cli_words(served, served.output)]
    _check_against_cli(downloaded, cli_file(), served.photo)
    loads = served.session.loads
    # cancel: a long run stops at its next step
    job = client.submit(**_controls(served, served.photo, steps=500), api_name="/outpaint")
    _cancel_once_stepping(client, job, status_at=3, api_name="/cancel")
    assert served.session.loads == loads  # the model stayed loaded between runs
    # Describe with no captioner to be had (offline, none cached): the CLI's one line, and the app goes on
    center, surrounding, status = client.predict(**_controls(served, served.photo), api_name="/describe")
    assert "captioner" in status and "HF_HUB_OFFLINE" in status and "\n" not in status.strip()


def _cancel_once_stepping(client, job, status_at: int, api_name: str) -> None:
    """Cancel ``job`` once its status says "Step": it ends cancelled, and as it ends while Cancel waits, Cancel
    answers with the run's own last line (the page then shows how the run ended, whichever message comes last)."""
    for _ in range(600):
        if any("Step" in str(output[status_at]) for output in job.outputs() if output):
            break
        threading.Event().wait(0.1)
    else:
        pytest.fail("the run never reported a step")
    answer = client.predict(api_name=api_name)
    ended = job.result()[status_at]
    assert "cancelled at step" in ended and answer == ended


@pytest.mark.slow
def test_gradio_client_edit(served, tmp_path):
    client = Client(served.url, verbose=False, download_files=str(tmp_path / "downloads"))
    edit = dict(photo=handle_file(str(served.photo)), mask=None, model=str(served.edits.test_model), steps=2, seed=SEED)
    *_, status, _meta = client.predict(**edit, instruction=" ", api_name="/edit")
    assert "instruction" in status and "is empty" in status and "\n" not in status.strip()  # vip edit's words
    for _ in range(2):
        gallery, files, status, metadata = client.predict(**edit, instruction="make it blue", api_name="/edit")
        assert status.startswith("Done"), status
    downloaded = Path(files[0])
    assert downloaded.read_bytes() in [path.read_bytes() for path in served.output.rglob("coffee_edit.png")]
    assert read_metadata(downloaded)["vip"]["instruction"] == "make it blue" == metadata["instruction"]
    assert served.edits.loads == 1 and served.session.model is None  # warm; the outpaint model was freed for it
    job = client.submit(**{**edit, "steps": 500}, instruction="make it blue", api_name="/edit")
    _cancel_once_stepping(client, job, status_at=2, api_name="/cancel_edit")


@pytest.mark.slow
def test_browser_use_as_input_extends_the_result_again(page, served, tmp_path):
    page.locator("#photo input[type=file]").set_input_files(str(served.photo))
    page.wait_for_function("() => document.querySelector('#canvas-info')?.innerText.includes('Canvas 144x96')")
    _fill(page, "ratio", "2x")
    page.wait_for_function("() => document.querySelector('#canvas-info')?.innerText.includes('Canvas 192x128')")
    _advanced(page, STEPS)
    page.locator("#run").click()
    status = _wait_status(page, "Done", "error")
    assert "Done" in status, status
    (tmp_path / "first").mkdir()
    first = _download(page, "files", tmp_path / "first")
    page.locator("#use-as-input").click()  # the 192x128 result becomes the photo: at 2x, a 384x256 canvas
    page.wait_for_function("() => document.querySelector('#canvas-info')?.innerText.includes('Canvas 384x256')")
    page.wait_for_function("() => document.querySelector('#preview img')?.naturalWidth === 384")
    page.shot("result-as-input")
    page.locator("#run").click()
    # the result of the result, named as the CLI names it
    page.wait_for_function("() => document.querySelector('#files')?.innerText.includes('coffee_outpaint_outpaint')")
    assert "Done" in _status(page)
    page.shot("extended-again")
    second = _download(page, "files", tmp_path)
    assert Image.open(second).size == (384, 256)
    left, top, right, bottom = read_metadata(second)["vip"]["image_box"]
    assert (right - left, bottom - top) == (192, 128)
    assert np.array_equal(pixels(second)[top:bottom, left:right], pixels(first))  # feather 0: the first result kept


@pytest.mark.slow
def test_browser_shows_first_use_downloads_in_the_page(page, served, monkeypatch):
    """A model fetched on first use: its download's bytes show in the page as they arrive (the bar stands in for
    huggingface_hub's, made from the class the run hands the library)."""
    loaded = served.session.outpainter
    seen_in_page = threading.Event()

    def downloading(model, on_loading=None, download_progress=None):
        if on_loading is not None:
            on_loading(model.model)
        bar = download_progress(total=3 * 2**20, initial=0, unit="B", unit_scale=True, desc="Downloading bytes")
        bar.update(2**20)
        seen_in_page.wait(120)  # a busy machine may be slow to render: the download goes on once the page shows it
        bar.update(2 * 2**20)
        bar.close()
        return loaded(model, None, download_progress)

    monkeypatch.setattr(served.session, "outpainter", downloading)
    page.locator("#photo input[type=file]").set_input_files(str(served.photo))
    page.wait_for_function("() => document.querySelector('#canvas-info')?.innerText.includes('Canvas')")
    _advanced(page, STEPS)
    page.locator("#run").click()
    _wait_status(page, "Downloading the model's files: ")
    page.shot("downloading")
    assert _status(page).strip().endswith(" of 3.15 MB")
    seen_in_page.set()
    assert "Done" in _wait_status(page, "Done", "error")


@pytest.mark.slow
def test_browser_edit_with_a_painted_mask(page, served, tmp_path):
    page.get_by_role("tab", name="Edit").click()
    page.locator("#edit-photo input[type=file]").set_input_files(str(served.photo))
    # the photo is the painting's background once the editor has zoomed to fit it (this small photo: over 100%)
    page.wait_for_function("() => parseInt(document.querySelector('#edit-mask .zoom-number')?.innerText) > 100")
    page.locator("#edit-mask").get_by_role("button", name="Brush").first.click()
    box = page.locator("#edit-mask canvas").first.bounding_box()
    center_x, center_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(center_x - 40, center_y)
    page.mouse.down()
    for step in range(1, 9):
        page.mouse.move(center_x - 40 + 10 * step, center_y)
    page.mouse.up()
    page.shot("painted")
    _fill(page, "edit-instruction", "make it blue")
    _fill(page, "edit-model", str(served.edits.test_model))
    page.locator("#edit-advanced").get_by_text("Advanced").click()
    _fill(page, "edit-steps", "2")
    _fill(page, "edit-seed", str(SEED))
    page.locator("#edit-run").click()
    status = _wait_status(page, "Done", "error", "not", at="edit-status")
    assert "Done" in status, status
    page.shot("edited")
    edited = _download(page, "edit-files", tmp_path)
    mask_file = read_metadata(edited)["vip"]["mask"]  # the painted mask, as `vip edit --mask` takes it
    may_change = np.asarray(Image.open(mask_file).convert("L")) >= 128
    assert may_change.shape == PHOTO_SIZE[::-1]
    assert may_change[PHOTO_SIZE[1] // 2, PHOTO_SIZE[0] // 2] and not may_change[0, 0] and not may_change[-1, -1]
    assert 0.05 < may_change.mean() < 0.9  # the stroke, not the whole photo
    result, photo = pixels(edited), pixels(served.photo)
    assert np.array_equal(result[~may_change], photo[~may_change])  # outside the stroke: the photo's pixels
    assert (result[may_change] != photo[may_change]).any()  # inside it the edit changed the photo


@pytest.mark.slow
def test_gradio_client_sees_first_use_downloads_in_the_progress(served, monkeypatch, tmp_path):
    """The run's gr.Progress carries a download's bytes: what API clients see in the job's status."""
    from vipcli.commands.models import human_size

    loaded = served.edits.editor
    seen_by_client = threading.Event()

    def downloading(model, on_loading=None, download_progress=None):
        bar = download_progress(total=2 * 2**20, initial=0, unit="B", desc="Downloading bytes")
        # the client keeps only the latest status (a progress step or the page's status line, whichever came last):
        # the bytes arrive in steps until it has seen one, as a real download goes on, however busy the machine
        for _ in range(100):
            bar.update(2**14)
            if seen_by_client.wait(0.3):
                break
        bar.update(2 * 2**20 - bar.done)
        bar.close()
        return loaded(model, on_loading, download_progress)

    monkeypatch.setattr(served.edits, "editor", downloading)
    client = Client(served.url, verbose=False, download_files=str(tmp_path / "downloads"))
    edit = dict(photo=handle_file(str(served.photo)), instruction="make it blue", model=str(served.edits.test_model))
    job = client.submit(**edit, steps=1, seed=SEED, api_name="/edit")
    seen = set()
    while not job.done():
        units = job.status().progress_data or []
        seen.update((unit.index, unit.length, unit.unit, unit.desc) for unit in units)
        if any(unit.unit == "bytes" for unit in units):
            seen_by_client.set()
        threading.Event().wait(0.05)
    assert job.result()[2].startswith("Done")
    # the client keeps the latest update, so it sees some of the bar's steps
    assert any(
        length == 2**21 and unit == "bytes" and desc == f"Downloading the model's files: {human_size(done)} of 2.10 MB"
        for done, length, unit, desc in seen
    ), seen


@pytest.mark.slow
def test_describe_shows_the_captioner_download_then_its_prompts(served, monkeypatch, tmp_path):
    """Describe may fetch the captioner on first use: its bytes reach the job's progress, then the prompts come."""
    from vipcli_model.captioning import captioner as captioning

    seen_by_client = threading.Event()

    class Answering:  # a captioner that answers every question with one sentence
        name = "stand-in captioner for describe"

        def generate(self, image, instruction, *, max_new_tokens):
            return "A quiet harbour at dawn."

    def downloading(*args, tqdm_class=None, **kwargs):
        bar = tqdm_class(total=2 * 2**20, initial=0, unit="B", desc="Downloading bytes")
        for _ in range(100):  # steps until the client has seen one (it keeps only the latest status)
            bar.update(2**14)
            if seen_by_client.wait(0.3):
                break
        bar.update(2 * 2**20 - bar.done)
        bar.close()
        return Answering()

    monkeypatch.setattr(captioning, "load_captioner", downloading)
    monkeypatch.setattr(served.session, "_captioner", None)
    client = Client(served.url, verbose=False, download_files=str(tmp_path / "downloads"))
    job = client.submit(**_controls(served, served.photo), api_name="/describe")
    seen = set()
    while not job.done():
        units = job.status().progress_data or []
        seen.update((unit.length, unit.unit, unit.desc) for unit in units)
        if any(unit.unit == "bytes" for unit in units):
            seen_by_client.set()
        threading.Event().wait(0.05)
    center, surrounding, status = job.result()
    assert status.startswith("Described"), status
    assert "harbour" in f"{center} {surrounding}"
    assert any(length == 2**21 and unit == "bytes" and "of 2.10 MB" in desc for length, unit, desc in seen), seen
