"""The captioner library: answers cleaned and fitted, both backends, cache, JSON Lines, batch runs."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from tiny_vlm import ChatCompletionsStub, build_tiny_processor, shared_tiny_vlm

from vipcli_model.captioning import captioner as cap
from vipcli_model.captioning import templates
from vipcli_model.errors import CaptionerError, InputError, ModelNotFoundError, OptionError
from vipcli_model.prompts import RegionPrompts


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    return shared_tiny_vlm(tmp_path_factory)


@pytest.fixture(scope="session")
def photos():
    import skimage.data

    return {
        "astronaut": Image.fromarray(skimage.data.astronaut()),
        "coffee": Image.fromarray(skimage.data.coffee()),
        "chelsea": Image.fromarray(skimage.data.chelsea()),
    }


class CountingCaptioner:
    """A scripted captioner that counts its calls (what a real one would cost)."""

    name = "counting-captioner"

    def __init__(self, answer: str = "Assistant: A cat on a windowsill.<end_of_utterance>"):
        self.answer = answer
        self.calls: list[str] = []

    def generate(self, image, instruction, *, max_new_tokens):
        self.calls.append(instruction)
        return self.answer


# ------------------------------------------------------------------ cleaning


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (" The image shows a woman in a white space suit.<end_of_utterance>", "A woman in a white space suit."),
        (
            "<|im_start|>User:<image>Describe this photo.<end_of_utterance>\nAssistant: A cup of coffee on a saucer.",
            "A cup of coffee on a saucer.",
        ),
        ('<|im_start|>assistant\nCenter: "A tabby cat on a windowsill."<|im_end|>', "A tabby cat on a windowsill."),
        (
            "Sure! Here is a description of the surroundings:\n\n**A wooden floor** and a sofa.\n- a lamp\n- a window",
            "A wooden floor and a sofa. a lamp, a window",
        ),
        ("<think>the user wants a caption</think>Surrounding: *Blue sky* with clouds.", "Blue sky with clouds."),
        ("In this image, a man rides a horse.</s>", "A man rides a horse."),
        ("Answer: 'Snowy mountains under a grey sky.'", "Snowy mountains under a grey sky."),
    ],
)
def test_clean_answer_strips_chat_artefacts(raw, clean):
    assert cap.clean_answer(raw) == clean


def test_unfinished_last_sentence_is_dropped_only_when_the_answer_hit_its_token_limit():
    captioner = CountingCaptioner("A cat sleeps on a mat. It looks at the")
    assert cap._ask(captioner, Image.new("RGB", (8, 8)), "q", "Center") == "A cat sleeps on a mat. It looks at the"
    long_answer = "A cat sleeps on a soft red mat near the window. " * 7 + "It looks at the"
    captioner = CountingCaptioner(long_answer)
    assert cap._ask(captioner, Image.new("RGB", (8, 8)), "q", "Center").endswith("window.")


def test_an_answer_with_nothing_left_is_an_error_for_that_image():
    with pytest.raises(cap.EmptyAnswerError, match="no usable Center description"):
        cap._ask(CountingCaptioner("<|im_end|>"), Image.new("RGB", (8, 8)), "q", "Center")


# ------------------------------------------------------------------ 77-token window

WORDS = (
    "a",
    "woman",
    "in",
    "white",
    "space",
    "suit",
    "stands",
    "front",
    "of",
    "flag",
    "the",
    "sky",
    "is",
    "dark",
    "blue",
    "with",
    "stars",
    "and",
    "station",
    "behind",
    "her",
    "floor",
    "grey",
)
SENTENCES = [
    "A woman in a white space suit stands in front of a flag.",
    "The sky is dark blue with stars.",
    "A space station stands behind her.",
    "The floor is grey.",
]


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from tiny_models import write_clip_tokenizer
    from transformers import CLIPTokenizer

    folder = write_clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"), words=WORDS)
    return CLIPTokenizer.from_pretrained(folder)


def test_fit_cuts_at_a_sentence_boundary_with_a_clip_tokenizer(clip_tokenizer):
    text = " ".join(SENTENCES * 4)
    assert cap.count_tokens(text, clip_tokenizer) > 77
    fitted, cut = cap.fit_to_token_window(text, clip_tokenizer)
    assert cut
    assert cap.count_tokens(fitted, clip_tokenizer) <= 77
    assert text.startswith(fitted) and fitted.endswith(".")
    next_sentence = text[len(fitted) :].strip().split(". ")[0] + "."
    assert cap.count_tokens(f"{fitted} {next_sentence}", clip_tokenizer) > 77  # as much as fits


def test_fit_falls_back_to_a_word_boundary_and_leaves_short_text_alone(clip_tokenizer):
    one_sentence = "a woman " * 60 + "stands."
    fitted, cut = cap.fit_to_token_window(one_sentence, clip_tokenizer)
    assert cut and cap.count_tokens(fitted, clip_tokenizer) <= 77
    assert fitted.split() == one_sentence.split()[: len(fitted.split())]
    assert cap.fit_to_token_window(SENTENCES[0], clip_tokenizer) == (SENTENCES[0], False)


def test_fit_without_a_tokenizer_uses_a_word_estimate():
    text = " ".join(SENTENCES * 5)
    fitted, cut = cap.fit_to_token_window(text)
    assert cut and fitted.endswith(".") and 50 <= len(fitted.split()) <= 75
    assert cap.count_tokens("Blue sky, 2 birds.") == 2 + 6  # start/end + 3 words, a digit, 2 marks


def test_total_of_two_long_parts_keeps_both_and_fits(clip_tokenizer):
    center = " ".join(SENTENCES[:2] * 3)
    surrounding = " ".join(SENTENCES[2:] * 5)
    prompts, truncated = cap.fit_prompts(center, surrounding, clip_tokenizer)
    assert "total" in truncated
    assert prompts.total.startswith("Center: A woman") and "; Surrounding: A space station" in prompts.total
    for text in (prompts.center, prompts.surrounding, prompts.total):
        assert cap.count_tokens(text, clip_tokenizer) <= 77


# ------------------------------------------------------------------ the tiny VLM (transformers backend)


def test_tiny_vlm_loads_like_a_real_model_and_captions_photos(tiny_vlm_dir, photos):
    captioner = cap.load_captioner(model=str(tiny_vlm_dir), device="cpu")
    assert isinstance(captioner, cap.TransformersCaptioner) and isinstance(captioner, cap.Captioner)
    assert captioner.name == str(tiny_vlm_dir.resolve())
    result = cap.caption_for_outpaint(captioner, photos["astronaut"], keywords="snowy mountains")
    prompts = result.prompts
    assert prompts.center and prompts.surrounding.startswith("snowy mountains, ")
    assert prompts.total == f"Center: {prompts.center}; Surrounding: {prompts.surrounding}"
    assert (result.mode, result.template_version, result.cached) == ("outpaint", templates.TEMPLATE_VERSION, False)

    training = cap.caption_for_training(
        captioner, photos["chelsea"], cap.center_box_for_ratio(photos["chelsea"].size, 2)
    )
    assert training.center_box == (112, 75, 338, 225)  # chelsea is 451x300: a 226x150 box
    assert training.prompts.center and training.prompts.surrounding
    assert set(training.to_dict()) >= {"center", "surrounding", "total", "center_box", "model", "template_version"}


def test_smolvlm_images_are_limited_to_one_tile():
    processor = build_tiny_processor(longest_edge=64)  # the published layout: several tiles + a global view
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.new("RGB", (90, 60), "green")
    assert processor(text=[prompt], images=[image])["pixel_values"].shape[1] == 5  # 2x2 tiles + global view
    cap._limit_image_tiles(processor)
    assert processor(text=[prompt], images=[image], return_tensors="pt")["pixel_values"].shape[1] == 1


def test_a_model_that_is_not_cached_is_a_one_line_error_offline():
    with pytest.raises(ModelNotFoundError, match="not in the local cache") as caught:
        cap.load_captioner("HuggingFaceTB/no-such-captioner", device="cpu")
    assert "\n" not in str(caught.value)


def test_a_first_use_download_is_drawn_by_the_bars_the_caller_gives(tmp_path, photos, monkeypatch):
    """`vip caption`, `vip outpaint` and the app's Describe hand their download bars to the captioner's download."""
    from vipcli_model.captioning import backends

    given = []

    def ensure_model(spec, kind=None, **options):
        given.append(options.get("tqdm_class"))
        raise ModelNotFoundError(f"captioner '{spec}' is not here")

    monkeypatch.setattr(backends, "ensure_model", ensure_model)

    class Bars:  # stands in for a tqdm class
        pass

    with pytest.raises(ModelNotFoundError):
        cap.load_captioner("smolvlm-256m", device="cpu", tqdm_class=Bars)
    photo = tmp_path / "coffee.png"
    photos["coffee"].save(photo)
    spec = cap.CaptionerSpec(model="smolvlm-256m", device="cpu")
    with pytest.raises(ModelNotFoundError):
        cap.caption_images([photo], spec, use_cache=False, download_progress=Bars)
    assert given == [Bars, Bars]


# ------------------------------------------------------------------ the HTTP backend


@pytest.fixture()
def stub():
    server = ChatCompletionsStub()
    yield server
    server.close()


def test_http_captioner_sends_the_image_inline_and_reads_the_answer(stub, photos):
    captioner = cap.load_captioner(url=stub.url, server_model="smol", api_key="sk-test")
    stub.answer = "Assistant: A woman in a space suit.<|im_end|>"
    result = cap.caption_for_outpaint(captioner, photos["astronaut"], keywords="stars")
    assert result.prompts.center == "A woman in a space suit."
    assert result.model == f"smol@{stub.url}"
    request = stub.requests[0]
    assert request["model"] == "smol" and request["temperature"] == 0
    assert request["max_tokens"] == templates.MAX_NEW_TOKENS
    parts = {part["type"]: part for part in request["messages"][0]["content"]}
    assert parts["text"]["text"] == templates.outpaint_center_instruction()
    data_url = parts["image_url"]["image_url"]["url"]
    assert data_url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    assert sent.format == "PNG" and sent.size == photos["astronaut"].size
    assert "stars" in stub.requests[1]["messages"][0]["content"][0]["text"]
    assert stub.headers[0]["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("error", r"answered HTTP 500 Internal Server Error: model crashed"),
        ("garbage", r"answered something that is not JSON \('<html>Bad Gateway</html>'\)"),
        ("no-choices", r"answered JSON without choices\[0\]\.message\.content"),
        ("slow", r"did not answer within 0.3 s.*`captioner_timeout`"),
    ],
)
def test_http_failures_are_one_line_errors_naming_the_server(stub, behaviour, message):
    stub.behaviour = behaviour
    captioner = cap.load_captioner(url=stub.url + "/", server_model="smol", timeout=0.3)
    with pytest.raises(CaptionerError, match=message) as caught:
        captioner.generate(Image.new("RGB", (16, 16)), "Describe.", max_new_tokens=8)
    assert f"{stub.url}/chat/completions" in str(caught.value) and "\n" not in str(caught.value)


def test_a_server_that_is_not_running_is_a_clear_error():
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    captioner = cap.load_captioner(url=f"http://127.0.0.1:{port}/v1", server_model="smol", timeout=2)
    with pytest.raises(CaptionerError, match=r"cannot reach captioner server .*(refused|Connection).*`captioner_url`"):
        captioner.generate(Image.new("RGB", (16, 16)), "Describe.", max_new_tokens=8)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"url": "http://h/v1"}, "`captioner_url` http://h/v1 needs `captioner_model`"),
        ({"model": "smolvlm-256m", "url": "http://h/v1", "server_model": "m"}, "`captioner` and `captioner_url`"),
        ({"server_model": "m"}, "`captioner_model` names a model on a server"),
        ({"url": "ftp://h", "server_model": "m"}, "is not an http:// or https:// URL"),
        ({"url": "http://h", "server_model": "m", "timeout": 0}, "`captioner_timeout`"),
    ],
)
def test_contradictory_captioner_options_are_option_errors(arguments, message):
    with pytest.raises(OptionError, match=message):
        cap.CaptionerSpec(**arguments)


# ------------------------------------------------------------------ center box


@pytest.mark.parametrize(("text", "ratio"), [("2", 2.0), ("2x", 2.0), ("1.5x", 1.5), (" 8X ", 8.0)])
def test_parse_ratio_accepts_numbers_with_or_without_x(text, ratio):
    assert cap.parse_ratio(text) == ratio


@pytest.mark.parametrize("text", ["1", "1x", "0.5", "9x", "two", "", "nan"])
def test_parse_ratio_refuses_values_outside_1_to_8(text):
    with pytest.raises(OptionError, match="`ratio`"):
        cap.parse_ratio(text)


def test_center_box_is_the_middle_of_each_side():
    assert cap.center_box_for_ratio((256, 256), 2.0) == (64, 64, 192, 192)
    assert cap.center_box_for_ratio((300, 200), 1.5) == (50, 33, 250, 166)
    with pytest.raises(OptionError, match="inside the 10x10 image"):
        cap.check_center_box((0, 0, 11, 5), (10, 10))


# ------------------------------------------------------------------ cache


def test_the_cache_answers_a_repeated_caption_without_model_work(photos):
    captioner = CountingCaptioner()
    cache = cap.CaptionCache()
    assert cache.folder == Path(__import__("os").environ["VIP_CACHE_DIR"]) / "captions"
    first = cap.caption_for_outpaint(captioner, photos["coffee"], keywords="a table", cache=cache)
    again = cap.caption_for_outpaint(captioner, photos["coffee"], keywords="a table", cache=cache)
    assert len(captioner.calls) == 2 and (first.cached, again.cached) == (False, True)
    assert again.prompts == first.prompts
    cap.caption_for_outpaint(captioner, photos["coffee"], keywords="a garden", cache=cache)  # other question
    cap.caption_for_outpaint(captioner, photos["chelsea"], keywords="a table", cache=cache)  # other image
    box = (10, 10, 100, 100)
    cap.caption_for_training(captioner, photos["coffee"], box, cache=cache)
    cap.caption_for_training(captioner, photos["coffee"], box, cache=cache)
    assert len(captioner.calls) == 8


# ------------------------------------------------------------------ JSON Lines and batch runs


def _folder_of_photos(folder: Path, photos) -> Path:
    (folder / "sub").mkdir(parents=True)
    photos["astronaut"].resize((256, 256)).save(folder / "astronaut.png")
    photos["coffee"].resize((300, 200)).save(folder / "sub" / "coffee.jpg")
    return folder


def test_a_jsonl_run_resumes_without_model_work(tmp_path, photos, tiny_vlm_dir, monkeypatch):
    calls = {"load": 0, "generate": 0}
    real_load, real_generate = cap.TransformersCaptioner.load, cap.TransformersCaptioner.generate

    def counting_load(*args, **kwargs):
        calls["load"] += 1
        return real_load(*args, **kwargs)

    def counting_generate(self, *args, **kwargs):
        calls["generate"] += 1
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(cap.TransformersCaptioner, "load", counting_load)
    monkeypatch.setattr(cap.TransformersCaptioner, "generate", counting_generate)
    folder = _folder_of_photos(tmp_path / "data", photos)
    paths = [folder / "astronaut.png", folder / "sub" / "coffee.jpg"]
    spec = cap.CaptionerSpec(model=str(tiny_vlm_dir), device="cpu")
    jsonl = tmp_path / "caps.jsonl"

    first = cap.caption_images(
        paths, spec, for_training=True, ratio=2.0, jsonl=jsonl, data_root=folder, use_cache=False
    )
    assert [item.status for item in first.items] == ["captioned", "captioned"]
    assert calls == {"load": 1, "generate": 4}
    records = cap.read_caption_jsonl(jsonl)
    assert list(records) == ["astronaut.png", "sub/coffee.jpg"]
    assert records["astronaut.png"]["center_box"] == [64, 64, 192, 192]
    assert set(records["astronaut.png"]) == {
        "image",
        "center",
        "surrounding",
        "total",
        "center_box",
        "model",
        "template_version",
    }

    second = cap.caption_images(
        paths, spec, for_training=True, ratio=2.0, jsonl=jsonl, data_root=folder, use_cache=False
    )
    assert [item.status for item in second.items] == ["skipped", "skipped"]
    assert calls == {"load": 1, "generate": 4}  # no model loaded, nothing generated
    assert len(jsonl.read_text().splitlines()) == 2


def test_a_bad_image_fails_alone_and_the_rest_continue(tmp_path, photos):
    folder = _folder_of_photos(tmp_path / "data", photos)
    (folder / "broken.png").write_bytes(b"not a png at all")
    paths = sorted(folder.rglob("*.*"))
    seen = []
    run = cap.caption_images(
        paths,
        cap.CaptionerSpec(model="unused"),
        captioner=CountingCaptioner(),
        use_cache=False,
        on_item=lambda item, done, total: seen.append((item.path.name, item.status, done, total)),
    )
    assert seen == [
        ("astronaut.png", "captioned", 1, 3),
        ("broken.png", "failed", 2, 3),
        ("coffee.jpg", "captioned", 3, 3),
    ]
    assert run.failed == 1 and "broken.png" in run.items[1].error


def test_a_torn_last_line_is_ignored_then_repaired(tmp_path, caplog):
    jsonl = tmp_path / "caps.jsonl"
    whole = json.dumps({"image": "a.png", "center": "x", "surrounding": "y", "total": "Center: x; Surrounding: y"})
    jsonl.write_text(whole + "\n" + '{"image": "b.png", "cen')  # killed mid-write
    assert list(cap.read_caption_jsonl(jsonl)) == ["a.png"]
    assert "incomplete last line" in caplog.text
    result = cap.CaptionResult(RegionPrompts.build(center="c", surrounding="s"), [], "m", "v", "training", (0, 0, 1, 1))
    with cap.CaptionJsonlWriter(jsonl) as writer:
        writer.write(cap.jsonl_record("b.png", result))
    assert list(cap.read_caption_jsonl(jsonl)) == ["a.png", "b.png"]
    assert jsonl.read_text().count("\n") == 2


def test_a_bad_line_in_the_middle_is_an_error_naming_it(tmp_path):
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text('{"image": "a.png"}\nnot json\n{"image": "b.png"}\n')
    with pytest.raises(InputError, match=r"caps.jsonl, line 2: .*fix or delete that line"):
        cap.read_caption_jsonl(jsonl)
