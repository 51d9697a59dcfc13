"""What captioning keeps on disk: the answer cache (repeated runs cost nothing) and the JSON Lines
file ``vip train`` reads (written line by line so an interrupted run leaves a valid file)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs
from PIL import Image

from vipcli_model.captioning import templates
from vipcli_model.captioning.text import first_line as _first_line
from vipcli_model.errors import InputError, OutputError
from vipcli_model.files import atomic_write_text, read_jsonl

if TYPE_CHECKING:
    from vipcli_model.captioning.questions import Box, CaptionResult

logger = logging.getLogger(__name__)


# ============================================================================== cache


def caption_cache_dir() -> Path:
    """``$VIP_CACHE_DIR/captions`` when set, else ``<user cache>/vip/captions``."""
    if os.environ.get("VIP_CACHE_DIR"):
        return Path(os.environ["VIP_CACHE_DIR"]).expanduser() / "captions"
    return Path(platformdirs.user_cache_dir("vip", appauthor=False)) / "captions"


def image_digest(image: Image.Image) -> str:
    """sha256 of the decoded pixels (mode, size, bytes): the same picture gives the same digest."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class CaptionCache:
    """The captioner's cleaned answers, one JSON file per key, so repeated runs cost nothing.

    The key covers everything the answers depend on: the pixels, the captioner's name, the
    template version, the mode, and the keywords or center box. Prompts are fitted to the token
    window after reading, so one cached answer serves every text encoder. A file that cannot be
    read or written is logged and ignored: the cache never fails a run.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else caption_cache_dir()

    @staticmethod
    def key(image: Image.Image, *, model: str, mode: str, keywords: str = "", center_box: Box | None = None) -> str:
        parts = {
            "image": image_digest(image),
            "model": model,
            "template_version": templates.TEMPLATE_VERSION,
            "mode": mode,
            "keywords": " ".join(keywords.split()),
            "center_box": list(center_box) if center_box is not None else None,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, str] | None:
        path = self.path(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            answers = {"center": record["center"], "surrounding": record["surrounding"]}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable caption cache entry %s: %s", path, _first_line(exc))
            return None
        if not all(isinstance(value, str) and value for value in answers.values()):
            return None
        return answers

    def put(self, key: str, answers: dict[str, str], *, model: str = "", mode: str = "") -> None:
        path = self.path(key)
        record = {**answers, "model": model, "mode": mode, "template_version": templates.TEMPLATE_VERSION}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(record, ensure_ascii=False), durable=False)
        except OSError as exc:
            logger.warning("cannot write caption cache entry %s: %s", path, _first_line(exc))


# ============================================================================== JSON Lines


def read_caption_jsonl(path: str | Path) -> dict[str, dict[str, Any]]:
    """The records of a captions JSON Lines file, by their "image" path (a later line wins).

    A missing file is empty. A torn last line (a run killed mid-write) is ignored with a logged
    warning; a bad line elsewhere is an ``InputError`` naming the line (``files.read_jsonl``).
    """
    path = Path(path)
    try:
        lines = read_jsonl(path, _check_caption_record, what="a captions record")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InputError(f"cannot read captions file {path}: {exc.strerror or exc}") from exc
    return {record["image"]: record for _number, record in lines}


def _check_caption_record(record: Any) -> None:
    if not (isinstance(record, dict) and isinstance(record.get("image"), str)):
        raise ValueError('not an object with an "image" path')


class CaptionJsonlWriter:
    """Appends whole records to a JSON Lines file: one line each, flushed and fsynced, so an
    interrupted run leaves a valid file. A torn last line left by a crash is removed on open.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._repair_tail()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise OutputError(f"cannot write captions file {self.path}: {exc.strerror or exc}") from exc

    def _repair_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if data.endswith(b"\n"):
                return
            start = data.rfind(b"\n") + 1
            try:
                json.loads(data[start:].decode("utf-8"))
                handle.write(b"\n")  # a whole record that only lacks its newline
            except (UnicodeDecodeError, ValueError):
                logger.warning("%s: removing an incomplete last line (an interrupted run?)", self.path)
                handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write captions file {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CaptionJsonlWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def jsonl_record(image_key: str, result: CaptionResult) -> dict[str, Any]:
    """The JSON Lines record ``vip train`` reads: image path, prompts, center box, provenance."""
    record: dict[str, Any] = {"image": image_key, **result.prompts.to_dict()}
    if result.center_box is not None:
        record["center_box"] = list(result.center_box)
    record["model"] = result.model
    record["template_version"] = result.template_version
    return record
