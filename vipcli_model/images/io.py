"""Load and save images: validation, EXIF orientation, colour modes, metadata, atomic writes.

Loading turns whatever a user hands us (16-bit PNG, CMYK JPEG, palette GIF, rotated phone photo)
into one 8-bit RGB image plus, when the file had one, its alpha channel. Every conversion is
recorded in ``LoadedImage.notes``; nothing is corrected silently. A file that cannot be read
raises ``InputError`` with a one-line message naming the file.

Saving writes PNG, JPEG or WebP atomically (temp file in the same folder, fsync, ``os.replace``)
and stores the generation parameters the way AUTOMATIC1111 does, so other tools can read them:
PNG text chunks ``parameters`` and ``vip``; for JPEG/WebP the EXIF UserComment and
ImageDescription tags.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

from vipcli_model.errors import InputError, OptionError, OutputError
from vipcli_model.files import IMAGE_SUFFIXES, atomic_write, find_images, is_image_name

logger = logging.getLogger(__name__)

MAX_PIXELS_DEFAULT = 100_000_000  # larger inputs are refused (decompression-bomb guard)

# Output suffix -> Pillow format name.
SAVE_FORMATS: dict[str, str] = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}

_EXIF_IFD = 0x8769
_EXIF_IMAGE_DESCRIPTION = 0x010E
_EXIF_USER_COMMENT = 0x9286
_EXIF_ORIENTATION = 0x0112
_JPEG_MAX_EXIF_BYTES = 65_000  # an APP1 marker holds at most 65,533 bytes

# What Pillow raises on broken image data, besides OSError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Modes whose ICC profile (if any) still describes the pixels after conversion to RGB.
_RGB_PROFILE_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA")


@dataclass
class LoadedImage:
    """An input image, ready for the pipeline."""

    image: Image.Image  # mode "RGB", EXIF orientation applied
    path: Path  # the file it came from
    source_mode: str  # the file's Pillow mode before conversion, e.g. "RGBA", "I;16", "CMYK"
    alpha: Image.Image | None  # mode "L" alpha channel when the file had one, else None
    notes: list[str] = field(default_factory=list)  # conversions done, for the user to read


# --------------------------------------------------------------------------------------- loading


def load_image(path: str | Path, *, max_pixels: int = MAX_PIXELS_DEFAULT) -> LoadedImage:
    """Read an image file as 8-bit RGB (+ alpha), refusing missing, corrupt or huge files."""
    source = Path(path)
    notes: list[str] = []
    with _open_checked(source, max_pixels=max_pixels) as image:
        source_mode = image.mode
        _load_fully(image, source, notes)
        image = _apply_exif_orientation(image, source, notes)
        rgb, alpha = _to_rgb(image, source, notes)
    if source_mode not in _RGB_PROFILE_MODES and rgb.info.pop("icc_profile", None):
        notes.append(f"{source_mode} colour profile (ICC) dropped: it does not describe RGB pixels")
    for note in notes:
        logger.debug("%s: %s", source, note)
    return LoadedImage(image=rgb, path=source, source_mode=source_mode, alpha=alpha, notes=notes)


def load_mask(path: str | Path, *, size: tuple[int, int] | None = None) -> Image.Image:
    """Read a mask as mode "L" (colour masks by luminance; alpha is ignored).

    ``size`` is the (width, height) the mask must have, usually the image's (another is an ``OptionError``).
    """
    source = Path(path)
    with _open_checked(source, max_pixels=MAX_PIXELS_DEFAULT) as image:
        _load_fully(image, source, [])
        image = _apply_exif_orientation(image, source, [])
        rgb, _alpha = _to_rgb(image, source, [])
    mask = rgb.convert("L")
    if size is not None:
        check_mask_size(mask, size, source)
    return mask


def check_mask_size(mask: Image.Image, size: Sequence[int], source: str | Path | None = None) -> None:
    """A mask covers its image pixel for pixel: another size is the `mask` option's problem (``OptionError``), in
    every command. ``source``: the mask's file, named in the message."""
    if mask.size != tuple(size):
        named = f"`mask` {source}" if source is not None else "`mask`"
        raise OptionError(f"{named} is {_wxh(mask.size)}, but must match the image ({_wxh(size)})")


@contextlib.contextmanager
def _open_checked(path: Path, *, max_pixels: int) -> Iterator[Image.Image]:
    """Open ``path`` with Pillow (header only) after the cheap checks; yield the open image."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image file")
    try:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: file is empty (0 bytes)")
        with warnings.catch_warnings():
            # We apply our own pixel limit below; Pillow's softer one would only warn.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: image is too large to load safely ({_one_line(exc)})") from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"{path}: not an image file, or a format Pillow cannot read") from exc
    except PermissionError as exc:
        raise InputError(f"{path}: permission denied") from exc
    except _DECODE_ERRORS as exc:
        raise InputError(f"{path}: cannot read image header ({_one_line(exc)})") from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InputError(f"{path}: image has zero size ({width}x{height})")
        if width * height > max_pixels:
            raise InputError(
                f"{path}: image is {width}x{height} = {width * height:,} pixels, "
                f"more than the limit of {max_pixels:,} pixels"
            )
        yield image


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make Pillow raise on truncated data even if someone enabled LOAD_TRUNCATED_IMAGES."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _load_fully(image: Image.Image, path: Path, notes: list[str]) -> None:
    """Decode every pixel now, so a truncated file fails here and not halfway through a run."""
    try:
        with _strict_truncation(), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            _note_frames(image, notes)
            _note_sixteen_bit_png(image, notes)  # before load(), which empties image.tile
            image.load()
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: image is too large to load safely ({_one_line(exc)})") from exc
    except _DECODE_ERRORS as exc:
        kind = image.format or "image"
        raise InputError(f"{path}: truncated or corrupt {kind} ({_one_line(exc)})") from exc


def _note_frames(image: Image.Image, notes: list[str]) -> None:
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        notes.append(f"multi-frame {image.format or 'image'}: first of {frames} frames used")


def _note_sixteen_bit_png(image: Image.Image, notes: list[str]) -> None:
    """Pillow reads 16-bit colour PNGs as 8-bit "RGB"/"RGBA"; say so."""
    if image.mode in ("RGB", "RGBA", "LA") and any(
        str(tile[3]).endswith(";16B") for tile in getattr(image, "tile", ())
    ):
        notes.append("16-bit image reduced to 8 bits")


def _apply_exif_orientation(image: Image.Image, path: Path, notes: list[str]) -> Image.Image:
    """Turn the pixels upright; always returns a copy (the opened file gets closed)."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        upright = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as exc:
        notes.append(f"EXIF data unreadable, orientation ignored ({_one_line(exc)})")
        return image.copy()
    if orientation not in (None, 1):
        notes.append(f"EXIF orientation {orientation} applied (image rotated/flipped upright)")
    return upright


def _to_rgb(image: Image.Image, path: Path, notes: list[str]) -> tuple[Image.Image, Image.Image | None]:
    """Convert any Pillow mode to 8-bit RGB; return (rgb, alpha or None)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image, None
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        notes.append(f"16-bit image reduced to 8 bits ({mode})")
        return _integer_to_8bit(image, mode, notes).convert("RGB"), None
    if mode == "F":
        return _float_to_8bit(image, notes).convert("RGB"), None
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB", "1") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        rgb = rgba.convert("RGB")
        rgb.info = dict(image.info)
        rgb.info.pop("transparency", None)
        notes.append(_alpha_note(mode, alpha))
        return rgb, alpha
    if mode in ("L", "1"):
        notes.append(f"{'black-and-white' if mode == '1' else 'greyscale'} image converted to RGB")
    elif mode == "P":
        notes.append("palette image converted to RGB")
    elif mode == "CMYK":
        notes.append("CMYK image converted to RGB (simple conversion, no colour profile)")
    else:
        notes.append(f"{mode} image converted to RGB")
    try:
        return image.convert("RGB"), None
    except ValueError as exc:
        raise InputError(f"{path}: unsupported colour mode {mode} ({_one_line(exc)})") from exc


def _integer_to_8bit(image: Image.Image, mode: str, notes: list[str]) -> Image.Image:
    """16-bit (or 32-bit integer) greyscale -> "L", scaling 0..65535 to 0..255 (divide by 257)."""
    values = np.asarray(image).astype(np.float64)
    peak = float(values.max()) if values.size else 0.0
    if mode == "I" and (peak > 65535 or (values.size and values.min() < 0)):
        low = float(values.min())
        scale = 255.0 / (peak - low) if peak > low else 0.0
        notes.append(f"32-bit integer values {low:g}..{peak:g} stretched to 0..255")
        values = (values - low) * scale
    else:
        values = values / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _float_to_8bit(image: Image.Image, notes: list[str]) -> Image.Image:
    """Float greyscale -> "L": values read as 0..1 when the maximum is <= 1, else as 0..255."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if values.size and float(values.max()) <= 1.0:
        notes.append("32-bit float image read as 0..1 and converted to 8 bits")
        values = values * 255.0
    else:
        notes.append("32-bit float image read as 0..255 and converted to 8 bits")
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _alpha_note(mode: str, alpha: Image.Image) -> str:
    histogram = alpha.histogram()
    total = alpha.width * alpha.height
    transparent = total - histogram[255]
    if transparent == 0:
        return f"alpha channel separated ({mode}): every pixel is opaque"
    share = 100.0 * transparent / total
    return (
        f"alpha channel separated ({mode}): {share:.1f}% of pixels are transparent or "
        "partly transparent; their stored colour is kept as is"
    )


# --------------------------------------------------------------------------------------- inputs


def expand_inputs(specs: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Turn files, folders and glob patterns into image paths (in order, without duplicates).

    Folders are searched recursively for ``IMAGE_SUFFIXES`` (any case), skipping hidden entries
    (names starting with "."), and sorted. A spec is a glob pattern only when it contains
    ``* ? [`` and no file of that literal name exists. Returns (paths, [(spec, reason), ...])
    where the second list holds the specs that gave nothing.
    """
    paths: list[Path] = []
    seen: set[Path] = set()
    problems: list[tuple[str, str]] = []

    def add(found: Path) -> None:
        key = found.resolve()
        if key not in seen:
            seen.add(key)
            paths.append(found)

    for spec in specs:
        literal = Path(os.path.expanduser(spec))
        if literal.is_file():
            add(literal)
        elif literal.is_dir():
            images = find_images(literal)
            if not images:
                problems.append((spec, f"folder contains no images ({', '.join(IMAGE_SUFFIXES)})"))
            for image_path in images:
                add(image_path)
        elif any(char in spec for char in "*?["):
            matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
            images: list[Path] = []
            for match in map(Path, matches):
                if match.is_dir():
                    images.extend(find_images(match))
                elif match.is_file() and is_image_name(match):
                    images.append(match)
            if not matches:
                problems.append((spec, "no file or folder matches this pattern"))
            elif not images:
                problems.append((spec, "the pattern matches no images"))
            for image_path in images:
                add(image_path)
        else:
            problems.append((spec, "no such file or folder"))
    return paths, problems


# --------------------------------------------------------------------------------------- saving


def save_image(
    image: Image.Image,
    path: str | Path,
    *,
    metadata: dict | None = None,
    parameters: str | None = None,
    overwrite: bool = False,
    quality: int = 95,
) -> Path:
    """Write ``image`` atomically as PNG, JPEG or WebP (by suffix; none means PNG).

    ``parameters`` is the A1111 text (see ``format_parameters``), ``metadata`` a JSON-able dict
    stored under "vip". Returns the path written.
    """
    target = Path(path)
    if target.suffix == "":
        target = target.with_suffix(".png")
    image_format = SAVE_FORMATS.get(target.suffix.lower())
    if image_format is None:
        raise OutputError(f"{target}: cannot save as {target.suffix!r}; use one of {', '.join(SAVE_FORMATS)}")
    if not 1 <= quality <= 100:
        raise OptionError(f"quality={quality} is out of range; use 1 to 100")
    if target.is_dir():
        raise OutputError(f"{target}: is a folder; give a file name")
    if target.exists() and not overwrite:
        raise OutputError(f"{target}: exists; pass `overwrite=True` to replace it")

    # Build everything that can fail on bad arguments before touching the disk.
    vip_json = json.dumps(metadata) if metadata is not None else None
    image, options = _encoder_options(image, image_format, vip_json, parameters, quality)
    if image_format == "JPEG" and len(options.get("exif", b"")) > _JPEG_MAX_EXIF_BYTES:
        raise OutputError(f"{target}: metadata is too large for JPEG EXIF (over 64 KB); save as .png instead")

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{target.parent}: cannot create folder ({_os_reason(exc)})") from exc
    _write_atomically(target, image, image_format, options)
    logger.debug("wrote %s (%s, %dx%d)", target, image_format, image.width, image.height)
    return target


def _encoder_options(
    image: Image.Image, image_format: str, vip_json: str | None, parameters: str | None, quality: int
) -> tuple[Image.Image, dict[str, object]]:
    """The image in a mode the format can hold, and Pillow's save() options with metadata."""
    options: dict[str, object] = {}
    if image_format == "PNG":
        if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
            image = image.convert("RGBA" if image.has_transparency_data else "RGB")
        info = PngImagePlugin.PngInfo()
        if parameters is not None:
            info.add_text("parameters", parameters)  # iTXt when not Latin-1
        if vip_json is not None:
            info.add_text("vip", vip_json)
        options["pnginfo"] = info
        return image, options

    if image_format == "JPEG":
        if image.mode != "RGB":
            image = image.convert("RGB")
    elif image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    options["quality"] = quality
    exif = Image.Exif()
    if vip_json is not None:
        exif[_EXIF_IMAGE_DESCRIPTION] = vip_json  # ASCII: json.dumps escapes non-ASCII
    if parameters is not None:
        exif.get_ifd(_EXIF_IFD)[_EXIF_USER_COMMENT] = b"UNICODE\0" + parameters.encode("utf-16-be")
    if vip_json is not None or parameters is not None:
        options["exif"] = exif.tobytes()
    return image, options


def _write_atomically(target: Path, image: Image.Image, image_format: str, options: dict[str, object]) -> None:
    """Write to a temp file beside ``target``, fsync, then rename over it (``files.atomic_write``)."""
    try:
        atomic_write(target, lambda stream: image.save(stream, format=image_format, **options))
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({_os_reason(exc)})") from exc


# --------------------------------------------------------------------------------------- metadata


def read_metadata(path: str | Path) -> dict:
    """Read back what ``save_image`` stored: {"parameters": str | None, "vip": dict | None}."""
    source = Path(path)
    parameters: str | None = None
    vip_text: str | None = None
    with _open_checked(source, max_pixels=2**62) as image:
        try:
            if image.format == "PNG":
                text = dict(getattr(image, "text", {}))  # .text also reads chunks after IDAT
                parameters = text.get("parameters")
                vip_text = text.get("vip")
            else:
                exif = image.getexif()
                description = exif.get(_EXIF_IMAGE_DESCRIPTION)
                vip_text = description if isinstance(description, str) else None
                comment = exif.get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
                parameters = _decode_user_comment(comment) if comment is not None else None
        except _DECODE_ERRORS as exc:
            raise InputError(f"{source}: cannot read metadata ({_one_line(exc)})") from exc
    return {"parameters": parameters, "vip": _parse_vip(source, vip_text)}


def _parse_vip(path: Path, text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        logger.debug("%s: 'vip' metadata is not JSON; ignored", path)
        return None
    return value if isinstance(value, dict) else None


def _decode_user_comment(raw: bytes | str) -> str | None:
    """EXIF UserComment: an 8-byte charset prefix, then the text (A1111 writes UTF-16)."""
    if isinstance(raw, str):
        text = raw
    elif raw.startswith(b"UNICODE\0"):
        body = raw[8:]
        # We (and piexif, hence A1111) write big-endian; some tools write little-endian.
        # ASCII-range text has its zero bytes first in big-endian.
        big_endian = body[0::2].count(0) >= body[1::2].count(0)
        text = body.decode("utf-16-be" if big_endian else "utf-16-le", errors="replace")
    elif raw.startswith(b"ASCII\0\0\0"):
        text = raw[8:].decode("ascii", errors="replace")
    else:
        text = raw[8:].decode("utf-8", errors="replace") if len(raw) >= 8 else ""
    text = text.rstrip("\0 ")
    return text or None


def format_parameters(prompt: str, negative: str, settings: dict[str, object]) -> str:
    """A1111-style parameters text: prompt, "Negative prompt: ...", then "Key: value, ..."."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    pairs = [f"{key}: {_quote(value)}" for key, value in settings.items() if value is not None]
    if pairs:
        lines.append(", ".join(pairs))
    return "\n".join(lines).strip()


def _quote(value: object) -> str:
    """Quote a value like A1111 does: JSON string when it holds a comma, colon or newline."""
    text = str(value)
    if any(char in text for char in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


# --------------------------------------------------------------------------------------- helpers


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _os_reason(exc: OSError) -> str:
    return exc.strerror or _one_line(exc)


def _wxh(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"
