"""The toy world: 64 px pictures whose center and surroundings are drawn independently.

A picture is a frame (the surroundings) and a centered 32x32 square (the center), each filled
with one colour of :data:`COLOURS` in one texture of :data:`TEXTURES`; the two colours always
differ. Outpainting the center 2x per side (``--ratio 2x``) must regenerate exactly the frame, so
whether the result follows the Surrounding prompt can be read off the pixels: :func:`classify`
names the colour and texture of any region.

Captions are what ``vip caption --for-training`` writes (one JSON object a line, with the
``center_box`` the Center describes): Center and Surrounding name their region; Total names both parts in random
order without saying where each is ("red checker and blue stripes"), as a whole-image caption does. The base model is
trained on the Total alone, as SD inpainting was trained on image captions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64  # picture side in pixels
CENTER = (16, 16, 48, 48)  # (left, top, right, bottom) of the center square: 2x per side
PERIOD = 8  # texture cell in pixels (stripes and checker squares), on a grid fixed to the picture

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 55, 175),
    "orange": (240, 135, 30),
    "white": (235, 235, 235),
    "black": (25, 25, 25),
}
TEXTURES = ("plain", "stripes", "checker")
WORDS = (*COLOURS, *TEXTURES, "and")  # every word a caption uses (single tokens of the tokenizer)


def shade(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """The second tone of a textured fill: the colour halfway to mid-grey."""
    return tuple(int(round(c + 0.5 * (128 - c))) for c in colour)  # type: ignore[return-value]


def texture_pattern(texture: str, size: int = SIZE) -> np.ndarray:
    """(size, size) bool: True where a fill of ``texture`` shows its second tone."""
    ys, xs = np.mgrid[0:size, 0:size]
    if texture == "plain":
        return np.zeros((size, size), dtype=bool)
    if texture == "stripes":  # horizontal bands
        return (ys // PERIOD) % 2 == 1
    if texture == "checker":
        return ((ys // PERIOD) + (xs // PERIOD)) % 2 == 1
    raise ValueError(f"unknown texture '{texture}'")


@dataclass(frozen=True)
class Fill:
    colour: str
    texture: str

    @property
    def text(self) -> str:
        return f"{self.colour} {self.texture}"


@dataclass(frozen=True)
class Scene:
    center: Fill
    surrounding: Fill
    total_order: int = 0  # 0: "center and surrounding", 1: "surrounding and center"

    @property
    def total(self) -> str:
        parts = [self.center.text, self.surrounding.text]
        return " and ".join(parts if self.total_order == 0 else parts[::-1])

    def prompts(self) -> dict[str, str]:
        return {"center": self.center.text, "surrounding": self.surrounding.text, "total": self.total}


def paint(fill: Fill, size: int = SIZE) -> np.ndarray:
    """(size, size, 3) uint8 of one fill over the whole picture grid."""
    base = np.array(COLOURS[fill.colour], dtype=np.uint8)
    second = np.array(shade(COLOURS[fill.colour]), dtype=np.uint8)
    pattern = texture_pattern(fill.texture, size)
    return np.where(pattern[..., None], second, base).astype(np.uint8)


def render(scene: Scene) -> np.ndarray:
    """(64, 64, 3) uint8: the surrounding fill everywhere, the center fill in the center square."""
    picture = paint(scene.surrounding)
    left, top, right, bottom = CENTER
    picture[top:bottom, left:right] = paint(scene.center)[top:bottom, left:right]
    return picture


def random_scene(rng: np.random.Generator) -> Scene:
    names = list(COLOURS)
    center_colour, surround_colour = rng.choice(len(names), size=2, replace=False)
    center = Fill(names[center_colour], TEXTURES[rng.integers(len(TEXTURES))])
    surrounding = Fill(names[surround_colour], TEXTURES[rng.integers(len(TEXTURES))])
    return Scene(center, surrounding, int(rng.integers(2)))


def swapped(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same picture asked for another surrounding: a new colour (neither of the two shown) and texture."""
    names = [name for name in COLOURS if name not in (scene.center.colour, scene.surrounding.colour)]
    new = Fill(names[rng.integers(len(names))], TEXTURES[rng.integers(len(TEXTURES))])
    return Scene(scene.center, new, scene.total_order)


# ============================================================================ the dataset


def write_split(folder: Path, count: int, seed: int) -> list[tuple[str, Scene]]:
    """``count`` pictures as PNG files + ``captions.jsonl`` in ``folder``; returns (key, scene) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes: list[tuple[str, Scene]] = []
    lines: list[str] = []
    for index in range(count):
        scene = random_scene(rng)
        key = f"{index:05d}.png"
        Image.fromarray(render(scene)).save(folder / key)
        scenes.append((key, scene))
        lines.append(json.dumps({"image": key, **scene.prompts(), "center_box": list(CENTER)}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return scenes


def write_prompt_files(folder: Path, scenes: list[tuple[str, Scene]], seed: int) -> dict[str, Path]:
    """The `vip eval --prompts` files of the test split, by setting name.

    * ``total``:   the Total caption only (Center and Surrounding equal to it): the base model's setting;
    * ``regions``: Center, Surrounding and Total;
    * ``swap``:    as ``regions``, with the Surrounding (and the Total) naming another fill;
    * ``swap-total``: the Total of ``swap`` only.
    """
    rng = np.random.default_rng(seed)
    records: dict[str, list[dict]] = {"total": [], "regions": [], "swap": [], "swap-total": []}

    def total_only(key: str, scene: Scene) -> dict:
        return {"image": key, "center": scene.total, "surrounding": scene.total, "total": scene.total}

    for key, scene in scenes:
        other = swapped(scene, rng)
        records["total"].append(total_only(key, scene))
        records["regions"].append({"image": key, **scene.prompts()})
        records["swap"].append({"image": key, **other.prompts()})
        records["swap-total"].append(total_only(key, other))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in records.items():
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        paths[name] = path
    return paths


def read_scenes(prompts_file: Path) -> dict[str, Scene]:
    """Scenes back from a prompts / captions file written here (the swap file gives the asked-for fills)."""
    scenes = {}
    for line in prompts_file.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        center = Fill(*record["center"].split())
        surrounding = Fill(*record["surrounding"].split())
        order = 0 if record["total"].startswith(record["center"]) else 1
        scenes[record["image"]] = Scene(center, surrounding, order)
    return scenes


# ============================================================================ the classifier


def _references() -> tuple[np.ndarray, list[str], np.ndarray]:
    colours, names, second = [], [], []
    for name, rgb in COLOURS.items():
        for is_second, value in ((False, rgb), (True, shade(rgb))):
            colours.append(value)
            names.append(name)
            second.append(is_second)
    return np.array(colours, dtype=np.float32), names, np.array(second)


_REF_RGB, _REF_NAMES, _REF_SECOND = _references()


def region_mask(region: str, size: int = SIZE) -> np.ndarray:
    """(size, size) bool of ``region``: "center" (the known square) or "surrounding" (the generated frame)."""
    mask = np.zeros((size, size), dtype=bool)
    left, top, right, bottom = CENTER
    mask[top:bottom, left:right] = True
    return mask if region == "center" else ~mask


def classify(picture: np.ndarray, region: str = "surrounding") -> Fill:
    """The fill a region shows: the colour most of its pixels are nearest to, and the texture
    pattern (on the world's fixed grid) that best explains which pixels show the second tone."""
    mask = region_mask(region, picture.shape[0])
    pixels = picture[mask].astype(np.float32)
    distances = ((pixels[:, None, :] - _REF_RGB[None]) ** 2).sum(-1)
    nearest = distances.argmin(1)
    votes: dict[str, int] = {}
    for index in nearest:
        votes[_REF_NAMES[index]] = votes.get(_REF_NAMES[index], 0) + 1
    colour = max(votes, key=votes.get)
    # texture: per pixel, is it nearer this colour's second tone than its first?
    first = np.array(COLOURS[colour], dtype=np.float32)
    second = np.array(shade(COLOURS[colour]), dtype=np.float32)
    is_second = ((pixels - second) ** 2).sum(-1) < ((pixels - first) ** 2).sum(-1)
    scores = {
        texture: float((texture_pattern(texture, picture.shape[0])[mask] == is_second).mean()) for texture in TEXTURES
    }
    return Fill(colour, max(scores, key=scores.get))
