"""The cache of Inception features of a run folder's images: a resumed or re-scored run computes only new ones."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from vipcli_model.files import atomic_write_bytes

logger = logging.getLogger(__name__)


class FeatureCache:
    """Inception features of RUN_DIR's images, so a resumed or re-scored run computes only new ones.

    One ``.npz`` per weights file (named by its sha256); an entry is used only while its file has
    the same size and modification time. Features are stored as float32, which they are computed in.
    """

    def __init__(self, root: Path, weights_digest: str) -> None:
        self.root = root
        self.path = root / "cache" / f"inception-{weights_digest[:16]}.npz"
        self.entries: dict[str, tuple[tuple[int, int], np.ndarray, np.ndarray]] = {}
        self.changed = False
        try:
            with np.load(self.path, allow_pickle=False) as data:
                for name, signature, pool, logits in zip(
                    data["names"], data["signatures"], data["pool"], data["logits"]
                ):
                    self.entries[str(name)] = ((int(signature[0]), int(signature[1])), pool, logits)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring unreadable feature cache %s: %s", self.path, exc)

    def _name_and_signature(self, path: Path) -> tuple[str, tuple[int, int]]:
        stat = path.stat()
        try:
            name = path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            name = str(path.resolve())
        return name, (stat.st_size, stat.st_mtime_ns)

    def get(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        name, signature = self._name_and_signature(path)
        entry = self.entries.get(name)
        if entry is None or entry[0] != signature:
            return None
        return entry[1].astype(np.float64), entry[2].astype(np.float64)

    def put(self, path: Path, pool: np.ndarray, logits: np.ndarray) -> None:
        name, signature = self._name_and_signature(path)
        self.entries[name] = (signature, pool.astype(np.float32), logits.astype(np.float32))
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        names = sorted(self.entries)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            names=np.array(names, dtype=str),
            signatures=np.array([self.entries[n][0] for n in names], dtype=np.int64).reshape(len(names), 2),
            pool=np.stack([self.entries[n][1] for n in names]),
            logits=np.stack([self.entries[n][2] for n in names]),
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, buffer.getvalue(), durable=False)
        except OSError as exc:  # a cache never fails a run
            logger.warning("cannot write feature cache %s: %s", self.path, exc)
