"""Tests for vipcli_model.images.io: loading (modes, EXIF, bad files), inputs, saving, metadata."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from skimage import data as skdata

from vipcli_model.errors import InputError, OptionError, OutputError
from vipcli_model.images.io import (
    IMAGE_SUFFIXES,
    LoadedImage,
    expand_inputs,
    format_parameters,
    load_image,
    load_mask,
    read_metadata,
    save_image,
)

# ------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    """A real photo, 600x400 (wide), RGB."""
    return Image.fromarray(skdata.coffee())


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    """A real photo, shrunk to 128x128 to keep tests fast."""
    return Image.fromarray(skdata.astronaut()).resize((128, 128), Image.Resampling.BILINEAR)


def _png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A minimal PNG written by hand (lets us declare sizes and bit depths Pillow cannot write)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def _no_temp_files(folder: Path) -> bool:
    return not [path for path in folder.iterdir() if path.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------- modes


def test_rgb_png_loads_unchanged_without_notes(tmp_path: Path, coffee: Image.Image) -> None:
    path = tmp_path / "coffee.png"
    coffee.save(path)

    loaded = load_image(path)

    assert isinstance(loaded, LoadedImage)
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == (600, 400)
    assert loaded.path == path
    assert loaded.source_mode == "RGB"
    assert loaded.alpha is None
    assert loaded.notes == []
    assert np.array_equal(np.asarray(loaded.image), np.asarray(coffee))


def test_rgba_returns_colour_and_alpha(tmp_path: Path, astronaut: Image.Image) -> None:
    alpha = Image.linear_gradient("L").resize(astronaut.size)
    rgba = astronaut.copy()
    rgba.putalpha(alpha)
    path = tmp_path / "cutout.png"
    rgba.save(path)

    loaded = load_image(path)

    assert loaded.source_mode == "RGBA"
    assert loaded.image.mode == "RGB"
    assert np.array_equal(np.asarray(loaded.image), np.asarray(astronaut))
    assert loaded.alpha is not None and loaded.alpha.mode == "L"
    assert np.array_equal(np.asarray(loaded.alpha), np.asarray(alpha))
    assert any(note.startswith("alpha channel separated") and "%" in note for note in loaded.notes)


def test_la_returns_grey_as_rgb_and_alpha(tmp_path: Path, astronaut: Image.Image) -> None:
    grey = astronaut.convert("L")
    alpha = Image.new("L", grey.size, 255)
    alpha.paste(0, (0, 0, 64, 128))
    la = Image.merge("LA", (grey, alpha))
    path = tmp_path / "grey_alpha.png"
    la.save(path)

    loaded = load_image(path)

    assert loaded.source_mode == "LA"
    pixels = np.asarray(loaded.image)
    for channel in range(3):
        assert np.array_equal(pixels[..., channel], np.asarray(grey))
    assert loaded.alpha is not None
    assert np.array_equal(np.asarray(loaded.alpha), np.asarray(alpha))
    assert any("50.0%" in note for note in loaded.notes)


def test_palette_image_becomes_rgb(tmp_path: Path, astronaut: Image.Image) -> None:
    palette = astronaut.quantize(colors=32)
    path = tmp_path / "palette.png"
    palette.save(path)

    loaded = load_image(path)

    assert loaded.source_mode == "P"
    assert loaded.alpha is None
    assert np.array_equal(np.asarray(loaded.image), np.asarray(palette.convert("RGB")))
    assert "palette image converted to RGB" in loaded.notes


def test_palette_with_transparency_returns_alpha(tmp_path: Path, astronaut: Image.Image) -> None:
    palette = astronaut.quantize(colors=16)
    indices = np.asarray(palette)
    path = tmp_path / "sticker.gif"
    palette.save(path, transparency=int(indices[0, 0]))

    loaded = load_image(path)

    assert loaded.source_mode == "P"
    assert loaded.alpha is not None
    alpha = np.asarray(loaded.alpha)
    transparent = indices == indices[0, 0]
    assert np.all(alpha[transparent] == 0)
    assert np.all(alpha[~transparent] == 255)
    assert 0 < transparent.sum() < transparent.size  # the test really has both kinds of pixel


def test_cmyk_jpeg_becomes_rgb_close_to_original(tmp_path: Path, coffee: Image.Image) -> None:
    path = tmp_path / "print.jpg"
    coffee.convert("CMYK").save(path, quality=95)

    loaded = load_image(path)

    assert loaded.source_mode == "CMYK"
    assert loaded.image.mode == "RGB"
    assert np.abs(_pixels(loaded.image) - _pixels(coffee)).mean() < 4
    assert any("CMYK" in note for note in loaded.notes)


def test_greyscale_becomes_rgb(tmp_path: Path, coffee: Image.Image) -> None:
    grey = coffee.convert("L")
    path = tmp_path / "grey.png"
    grey.save(path)

    loaded = load_image(path)

    assert loaded.source_mode == "L"
    assert np.array_equal(np.asarray(loaded.image)[..., 1], np.asarray(grey))
    assert "greyscale image converted to RGB" in loaded.notes


def test_one_bit_becomes_black_and_white_rgb(tmp_path: Path, astronaut: Image.Image) -> None:
    path = tmp_path / "bw.png"
    astronaut.convert("1").save(path)

    loaded = load_image(path)

    assert loaded.source_mode == "1"
    assert set(np.unique(np.asarray(loaded.image))) == {0, 255}


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[65535, 257 * 100, 0], [32896, 128, 65535]], dtype=np.uint16)
    path = tmp_path / "depth16.png"
    Image.fromarray(values).save(path)

    loaded = load_image(path)

    assert loaded.source_mode in ("I;16", "I")
    pixels = np.asarray(loaded.image)[..., 0]
    assert pixels.tolist() == [[255, 100, 0], [128, 0, 255]]
    assert any("16-bit image reduced to 8 bits" in note for note in loaded.notes)


def test_big_endian_sixteen_bit_tiff(tmp_path: Path) -> None:
    values = np.array([[65535, 257 * 100]], dtype=">u2")
    path = tmp_path / "depth16be.tif"
    Image.frombytes("I;16B", (2, 1), values.tobytes()).save(path)

    loaded = load_image(path)

    assert loaded.source_mode == "I;16B"
    assert np.asarray(loaded.image)[0, :, 0].tolist() == [255, 100]


def test_32_bit_integer_holding_16_bit_values(tmp_path: Path) -> None:
    path = tmp_path / "int32.tif"
    Image.fromarray(np.array([[65535, 257 * 100, 0]], dtype=np.int32), mode="I").save(path)

    loaded = load_image(path)

    assert loaded.source_mode == "I"
    assert np.asarray(loaded.image)[0, :, 0].tolist() == [255, 100, 0]


def test_sixteen_bit_rgb_png_is_reduced_with_a_note(tmp_path: Path) -> None:
    row = np.array([[65535, 0, 257 * 100], [0, 65535, 0]], dtype=">u2").tobytes()
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png_bytes(2, 2, 16, 2, (b"\0" + row) * 2))

    loaded = load_image(path)

    assert np.asarray(loaded.image)[0].tolist() == [[255, 0, 100], [0, 255, 0]]
    assert "16-bit image reduced to 8 bits" in loaded.notes


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.0, 0.5, 1.0], [0, 128, 255]), ([0.0, 100.0, 300.0], [0, 100, 255])],
    ids=["unit-range", "byte-range"],
)
def test_float_image_range(tmp_path: Path, values: list[float], expected: list[int]) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([values], dtype=np.float32), mode="F").save(path)

    loaded = load_image(path)

    assert loaded.source_mode == "F"
    assert np.asarray(loaded.image)[0, :, 0].tolist() == expected


def test_multi_frame_gif_uses_first_frame(tmp_path: Path, astronaut: Image.Image) -> None:
    frames = [astronaut.quantize(colors=64), astronaut.rotate(90).quantize(colors=64)]
    frames.append(Image.new("P", astronaut.size, 3))
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])

    loaded = load_image(path)

    assert np.array_equal(np.asarray(loaded.image), np.asarray(frames[0].convert("RGB")))
    assert any("first of 3 frames" in note for note in loaded.notes)


def test_exif_orientation_is_applied(tmp_path: Path, coffee: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    coffee.save(path, exif=exif.tobytes(), quality=95)

    loaded = load_image(path)

    assert loaded.image.size == (400, 600)
    upright = np.rot90(np.asarray(coffee), k=-1).astype(np.int16)
    assert np.abs(_pixels(loaded.image) - upright).mean() < 4
    assert any("EXIF orientation 6" in note for note in loaded.notes)


# ------------------------------------------------------------------------------------- bad input


def test_truncated_jpeg_is_refused(tmp_path: Path, coffee: Image.Image) -> None:
    whole = tmp_path / "whole.jpg"
    coffee.save(whole)
    path = tmp_path / "photo.jpg"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    with pytest.raises(InputError, match=r"photo\.jpg: truncated or corrupt JPEG") as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_truncated_jpeg_is_refused_even_if_pillow_tolerates_truncation(
    tmp_path: Path, coffee: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    whole = tmp_path / "whole.jpg"
    coffee.save(whole)
    path = tmp_path / "photo.jpg"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    with pytest.raises(InputError, match=r"photo\.jpg: truncated"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()

    with pytest.raises(InputError, match=r"empty\.png: file is empty \(0 bytes\)"):
        load_image(path)


def test_text_file_named_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")

    with pytest.raises(InputError, match=r"notes\.png: not an image file"):
        load_image(path)


def test_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "shots.png"
    folder.mkdir()

    with pytest.raises(InputError, match=r"shots\.png: is a folder"):
        load_image(folder)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"ghost\.jpg: no such file"):
        load_image(tmp_path / "ghost.jpg")


def test_zero_width_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.png"
    path.write_bytes(_png_bytes(0, 5, 8, 2, b""))

    with pytest.raises(InputError, match=r"flat\.png: "):
        load_image(path)


def test_more_pixels_than_max_pixels_is_refused(tmp_path: Path, coffee: Image.Image) -> None:
    path = tmp_path / "coffee.png"
    coffee.save(path)

    with pytest.raises(InputError, match=r"coffee\.png: image is 600x400 = 240,000 pixels"):
        load_image(path, max_pixels=239_999)
    assert load_image(path, max_pixels=240_000).image.size == (600, 400)


def test_huge_header_is_refused_before_decoding(tmp_path: Path) -> None:
    # Declares 12000x10000 (120 M pixels, over our default limit) but holds one byte of data:
    # decoding it would fail as "truncated", so the message proves the size check came first.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes(12_000, 10_000, 8, 2, b"\0"))

    with pytest.raises(InputError, match=r"bomb\.png: image is 12000x10000 = 120,000,000 pixels"):
        load_image(path)


def test_giant_header_refused_by_pillow_guard_too(tmp_path: Path) -> None:
    path = tmp_path / "giant.png"
    path.write_bytes(_png_bytes(50_000, 50_000, 8, 2, b"\0"))

    with pytest.raises(InputError, match=r"giant\.png: image is too large"):
        load_image(path, max_pixels=10**12)


# ------------------------------------------------------------------------------------- masks


def test_mask_greyscale_round_trip(tmp_path: Path) -> None:
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (16, 0, 48, 48))
    path = tmp_path / "mask.png"
    mask.save(path)

    loaded = load_mask(path, size=(64, 48))

    assert loaded.mode == "L"
    assert np.array_equal(np.asarray(loaded), np.asarray(mask))


def test_mask_colour_uses_luminance_and_ignores_alpha(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 255, 255, 0))  # white but fully transparent
    rgba.paste((255, 0, 0, 255), (0, 0, 4, 8))  # opaque red on the left
    path = tmp_path / "mask_rgba.png"
    rgba.save(path)

    loaded = load_mask(path)

    pixels = np.asarray(loaded)
    assert loaded.mode == "L"
    assert np.all(pixels[:, 4:] == 255)
    red_luminance = Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0))
    assert red_luminance == 76
    assert np.all(pixels[:, :4] == red_luminance)


def test_mask_size_mismatch_names_both_sizes(tmp_path: Path) -> None:
    path = tmp_path / "small_mask.png"
    Image.new("L", (32, 32)).save(path)

    with pytest.raises(OptionError, match=r"`mask` \S*small_mask\.png is 32x32, but must match the image \(64x48\)"):
        load_mask(path, size=(64, 48))


def test_mask_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nomask\.png: no such file"):
        load_mask(tmp_path / "nomask.png")


# ------------------------------------------------------------------------------------- inputs


@pytest.fixture
def photo_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path (also the cwd) with a few images, a non-image and hidden files in folders."""
    pixel = Image.new("RGB", (2, 2))
    names = ["a.png", "b.JPG", "sub/c.webp", "sub/deeper/d.tiff", "sub/._e.jpg", ".cache/f.png"]
    for name in names:
        target = tmp_path / "shots" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        pixel.save(target, format="PNG")
    (tmp_path / "shots" / "notes.txt").write_text("not an image")
    (tmp_path / "loose1.png").write_bytes(b"x")
    (tmp_path / "loose2.png").write_bytes(b"x")
    (tmp_path / "empty_folder").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_expand_inputs_folder_is_recursive_sorted_and_skips_hidden(photo_tree: Path) -> None:
    paths, problems = expand_inputs(["shots"])

    assert [path.as_posix() for path in paths] == [
        "shots/a.png",
        "shots/b.JPG",
        "shots/sub/c.webp",
        "shots/sub/deeper/d.tiff",
    ]
    assert problems == []


def test_expand_inputs_keeps_order_and_removes_duplicates(photo_tree: Path) -> None:
    specs = ["loose2.png", "shots", "loose*.png", "shots/a.png", "./loose2.png"]

    paths, problems = expand_inputs(specs)

    assert [path.as_posix() for path in paths] == [
        "loose2.png",
        "shots/a.png",
        "shots/b.JPG",
        "shots/sub/c.webp",
        "shots/sub/deeper/d.tiff",
        "loose1.png",
    ]
    assert problems == []


def test_expand_inputs_reports_specs_that_give_nothing(photo_tree: Path) -> None:
    specs = ["missing.png", "nothing*.jpg", "shots/*.txt", "empty_folder", "loose1.png"]

    paths, problems = expand_inputs(specs)

    assert [path.as_posix() for path in paths] == ["loose1.png"]
    reasons = dict(problems)
    assert [spec for spec, _ in problems] == specs[:4]
    assert reasons["missing.png"] == "no such file or folder"
    assert "no file or folder matches" in reasons["nothing*.jpg"]
    assert "matches no images" in reasons["shots/*.txt"]
    assert "contains no images" in reasons["empty_folder"]


def test_expand_inputs_recursive_glob_and_literal_brackets(photo_tree: Path) -> None:
    (photo_tree / "take[1].png").write_bytes(b"x")  # a real name that looks like a pattern

    paths, problems = expand_inputs(["shots/**/*.webp", "take[1].png"])

    assert [path.as_posix() for path in paths] == ["shots/sub/c.webp", "take[1].png"]
    assert problems == []


def test_image_suffixes_cover_what_folders_pick_up() -> None:
    assert ".jpg" in IMAGE_SUFFIXES and ".tiff" in IMAGE_SUFFIXES
    assert all(suffix == suffix.lower() for suffix in IMAGE_SUFFIXES)


# ------------------------------------------------------------------------------------- saving


SETTINGS: dict[str, object] = {
    "Steps": 30,
    "Sampler": "DPM++ 2M",
    "CFG scale": 7.5,
    "Seed": 1,
    "Size": "1024x1024",
    "Model": "stable-diffusion-v1-5/stable-diffusion-inpainting",
}
METADATA = {"center": "a cup of coffee", "expand": [128, 0, 128, 0], "seed": 1, "note": "café ☕"}


def test_format_parameters_matches_a1111_layout() -> None:
    text = format_parameters("a cup of coffee, on a table", "blurry", SETTINGS)

    assert text.splitlines() == [
        "a cup of coffee, on a table",
        "Negative prompt: blurry",
        "Steps: 30, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 1, Size: 1024x1024, "
        "Model: stable-diffusion-v1-5/stable-diffusion-inpainting",
    ]


def test_format_parameters_quotes_commas_colons_and_skips_empty_negative() -> None:
    settings = {"Steps": 20, "Region prompt": "sky, clouds", "Ratio": "16:9", "Notes": "a\nb"}

    text = format_parameters("sky", "", settings)

    assert text == 'sky\nSteps: 20, Region prompt: "sky, clouds", Ratio: "16:9", Notes: "a\\nb"'


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".webp"])
def test_save_round_trip_keeps_metadata(tmp_path: Path, coffee: Image.Image, suffix: str) -> None:
    parameters = format_parameters("a cup of coffee ☕ on a café table", "blurry", SETTINGS)
    path = tmp_path / "out" / f"result{suffix}"

    written = save_image(coffee, path, metadata=METADATA, parameters=parameters)

    assert written == path and path.is_file()
    assert _no_temp_files(path.parent)
    assert read_metadata(path) == {"parameters": parameters, "vip": METADATA}
    with Image.open(path) as reopened:
        assert reopened.format == {".png": "PNG", ".webp": "WEBP"}.get(suffix, "JPEG")
        assert reopened.size == coffee.size
        difference = np.abs(_pixels(reopened.convert("RGB")) - _pixels(coffee))
    if suffix == ".png":
        assert difference.max() == 0
    else:
        assert difference.mean() < 4


def test_png_metadata_chunks_are_readable_by_other_tools(tmp_path: Path, coffee: Image.Image) -> None:
    path = tmp_path / "result.png"
    save_image(coffee, path, metadata={"seed": 3}, parameters="cat\nSteps: 5")

    with Image.open(path) as reopened:
        assert reopened.text["parameters"] == "cat\nSteps: 5"
        assert json.loads(reopened.text["vip"]) == {"seed": 3}


def test_jpeg_user_comment_is_a1111_unicode(tmp_path: Path, coffee: Image.Image) -> None:
    path = tmp_path / "result.jpg"
    save_image(coffee, path, parameters="cat")

    with Image.open(path) as reopened:
        comment = reopened.getexif().get_ifd(0x8769)[0x9286]
    assert comment == b"UNICODE\0" + "cat".encode("utf-16-be")


def test_read_metadata_of_plain_files_is_empty(tmp_path: Path, coffee: Image.Image) -> None:
    for name in ["plain.png", "plain.jpg", "plain.webp"]:
        coffee.save(tmp_path / name)
        assert read_metadata(tmp_path / name) == {"parameters": None, "vip": None}


def test_save_without_suffix_writes_png(tmp_path: Path, coffee: Image.Image) -> None:
    written = save_image(coffee, tmp_path / "result")

    assert written == tmp_path / "result.png"
    with Image.open(written) as reopened:
        assert reopened.format == "PNG"


def test_save_converts_rgba_to_rgb_for_jpeg(tmp_path: Path, astronaut: Image.Image) -> None:
    rgba = astronaut.convert("RGBA")

    written = save_image(rgba, tmp_path / "result.jpg")

    with Image.open(written) as reopened:
        assert reopened.mode == "RGB"


def test_save_refuses_to_overwrite(tmp_path: Path, coffee: Image.Image) -> None:
    path = tmp_path / "result.png"
    path.write_bytes(b"old")

    with pytest.raises(OutputError, match=r"result\.png: exists; pass `overwrite=True` to replace it"):
        save_image(coffee, path)
    assert path.read_bytes() == b"old"


def test_save_overwrite_replaces(tmp_path: Path, coffee: Image.Image) -> None:
    path = tmp_path / "result.png"
    path.write_bytes(b"old")

    save_image(coffee, path, overwrite=True)

    with Image.open(path) as reopened:
        assert reopened.size == coffee.size
    assert _no_temp_files(tmp_path)


def test_save_unknown_suffix_lists_allowed_ones(tmp_path: Path, coffee: Image.Image) -> None:
    with pytest.raises(OutputError, match=r"result\.bmp: .*\.png, \.jpg, \.jpeg, \.webp"):
        save_image(coffee, tmp_path / "result.bmp")
    assert list(tmp_path.iterdir()) == []


def test_saved_file_gets_normal_permissions(tmp_path: Path, coffee: Image.Image) -> None:
    umask = os.umask(0o022)
    try:
        written = save_image(coffee, tmp_path / "result.png")
    finally:
        os.umask(umask)
    assert written.stat().st_mode & 0o777 == 0o644


def _failing_save(folder: Path, seen: list[str]):
    """A stand-in for Image.save that writes half a file, then fails like a full disk.

    It records the names in ``folder`` at that moment, to show where the bytes were going.
    """

    def save(self: Image.Image, fp, format=None, **params) -> None:  # noqa: A002
        fp.write(b"\x89PNG partial")
        fp.flush()
        seen.extend(sorted(path.name for path in folder.iterdir()))
        raise OSError(28, "No space left on device")

    return save


def test_failed_save_leaves_no_file(tmp_path: Path, coffee: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(Image.Image, "save", _failing_save(tmp_path, seen))
    path = tmp_path / "result.png"

    with pytest.raises(OutputError, match=r"result\.png: cannot write \(No space left on device\)"):
        save_image(coffee, path)

    assert len(seen) == 1 and seen[0].startswith(".result.png.") and seen[0].endswith(".tmp")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_bytes(tmp_path: Path, coffee: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "result.jpg"
    path.write_bytes(b"old bytes")
    seen: list[str] = []
    monkeypatch.setattr(Image.Image, "save", _failing_save(tmp_path, seen))

    with pytest.raises(OutputError):
        save_image(coffee, path, overwrite=True, parameters="cat")

    assert len(seen) == 2  # the old file and the temp file being written
    assert path.read_bytes() == b"old bytes"
    assert _no_temp_files(tmp_path)


def test_interrupted_save_cleans_up_and_propagates(
    tmp_path: Path, coffee: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: Image.Image, fp, format=None, **params) -> None:  # noqa: A002
        fp.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)

    with pytest.raises(KeyboardInterrupt):
        save_image(coffee, tmp_path / "result.webp")
    assert list(tmp_path.iterdir()) == []
