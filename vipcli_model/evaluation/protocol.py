"""The outpainting benchmark protocol of the field (QueryOTR lineage, which VIP follows).

Each test image is resized to the ground-truth size (192x192); its center is the known input;
the model outpaints it back to 192x192. Settings, by how much larger the output is than what is
known (area factor):

=========  ===========  ==========  ===============  ===================  ==================
protocol   ground truth known       known box        area factor          per-side factor
=========  ===========  ==========  ===============  ===================  ==================
standard   192x192      128x128     (32, 32, 160,    2.25x (exact)        1.5x
                                    160)
5x         192x192      86x86       (53, 53, 139,    4.98x (192²/86²)     2.233x
                                    139)
11.7x      192x192      56x56       (68, 68, 124,    11.76x (192²/56²)    3.429x
                                    124)
custom     --size WxH   round(W/r)  centered         r² for --ratio r     --ratio r
           (192x192)    x round(H/r)
=========  ===========  ==========  ===============  ===================  ==================

The known side of the 5x and 11.7x settings is sqrt(192² / area) rounded to the nearest whole
pixel (85.9 -> 86, 56.1 -> 56); published tables do not state it, so ours is written here and in
every ``results.json``. ``--ratio`` is a *per-side* factor, as in ``vip outpaint --ratio``
(1.5x per side = 2.25x area = the standard setting).

The known box is placed by the same code that places the image on the outpaint canvas
(``canvas.plan_canvas(..., size=WxH)``, centered), so the box scored here is exactly the box
``vip outpaint`` pasted back. Resizing to the ground-truth size uses PIL bilinear, which is what
``torchvision.transforms.Resize`` does on PIL images in the published data loaders (with
Pillow's antialiasing when shrinking).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image

from vipcli_model.config import parse_ratio
from vipcli_model.errors import OptionError
from vipcli_model.outpainting.canvas import parse_size, plan_canvas

T = TypeVar("T")

DEFAULT_SIZE = (192, 192)


@dataclass(frozen=True)
class EvalProtocol:
    """One benchmark setting: the ground-truth size and the known center given to the model."""

    name: str  # "standard", "5x", "11.7x" or "custom"
    size: tuple[int, int]  # (width, height) of the ground truth and of every output
    known_size: tuple[int, int]  # (width, height) of the known center

    @property
    def known_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the known center in the ground truth, right/bottom exclusive."""
        return plan_canvas(self.known_size, size=f"{self.size[0]}x{self.size[1]}").image_box

    @property
    def area_factor(self) -> float:
        """How many times larger the output is than the known input (the number papers quote)."""
        return (self.size[0] * self.size[1]) / float(self.known_size[0] * self.known_size[1])

    @property
    def expansion_size(self) -> str:
        """The ``--size`` that outpaints the known center back to the ground-truth size."""
        return f"{self.size[0]}x{self.size[1]}"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "size": list(self.size),
            "known_size": list(self.known_size),
            "known_box": list(self.known_box),
            "area_factor": round(self.area_factor, 4),
            "resize": "PIL bilinear to size",
        }


PROTOCOLS: dict[str, EvalProtocol] = {
    "standard": EvalProtocol("standard", DEFAULT_SIZE, (128, 128)),
    "5x": EvalProtocol("5x", DEFAULT_SIZE, (86, 86)),
    "11.7x": EvalProtocol("11.7x", DEFAULT_SIZE, (56, 56)),
}
PROTOCOL_NAMES = (*PROTOCOLS, "custom")


def resolve_protocol(name: str | None = None, *, size: str | None = None, ratio: str | None = None) -> EvalProtocol:
    """``--protocol`` (+ ``--size`` / ``--ratio`` for custom) -> an ``EvalProtocol``.

    No name: "standard", or "custom" when ``size`` or ``ratio`` is given.
    """
    if name is None:
        name = "custom" if (size or ratio) else "standard"
    if name not in PROTOCOL_NAMES:
        raise OptionError(f"`protocol` '{name}' is not one of: {', '.join(PROTOCOL_NAMES)}")
    if name != "custom":
        if size or ratio:
            given = " and ".join(option for option, value in (("`size`", size), ("`ratio`", ratio)) if value)
            raise OptionError(f"{given} only apply to `protocol` custom; '{name}' fixes its own geometry")
        return PROTOCOLS[name]
    if not ratio:
        raise OptionError("`protocol` custom needs `ratio` R: the per-side factor (1.5x = 2.25x area, the standard)")
    width, height = parse_size(size) if size else DEFAULT_SIZE
    factor = parse_ratio(ratio, "`ratio`")
    if factor <= 1.0:
        raise OptionError(f"`ratio` '{ratio}' must be above 1x: the output must be larger than the known center")
    known = (max(1, int(round(width / factor))), max(1, int(round(height / factor))))
    if known == (width, height):
        raise OptionError(f"`ratio` '{ratio}' leaves nothing to generate at {width}x{height}: use a larger ratio")
    return EvalProtocol("custom", (width, height), known)


def ground_truth(image: Image.Image, protocol: EvalProtocol) -> Image.Image:
    """The test image as the protocol scores it: RGB, resized to ``protocol.size`` (aspect not kept)."""
    image = image.convert("RGB")
    if image.size == protocol.size:
        return image.copy()
    return image.resize(protocol.size, Image.Resampling.BILINEAR)


def known_region(truth: Image.Image, protocol: EvalProtocol) -> Image.Image:
    """The known center of a ground-truth image: what the model is given."""
    if truth.size != protocol.size:
        raise OptionError(
            f"ground truth is {truth.size[0]}x{truth.size[1]}, the protocol needs {protocol.expansion_size}"
        )
    return truth.crop(protocol.known_box)


def scaled_known_box(protocol: EvalProtocol, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The known box for an image of ``size`` (other tools' outputs may have another size):
    the protocol's box when the size matches, else the same fractions of each side."""
    if tuple(size) == protocol.size:
        return protocol.known_box
    left, top, right, bottom = protocol.known_box
    sx, sy = size[0] / protocol.size[0], size[1] / protocol.size[1]
    return (int(round(left * sx)), int(round(top * sy)), int(round(right * sx)), int(round(bottom * sy)))


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """The items process ``index`` of ``count`` handles: every ``count``-th, starting at ``index``.

    Interleaving keeps the shards balanced (sorted folders often group similar images) and the
    shards together hold every item exactly once.
    """
    if count < 1 or not 0 <= index < count:
        raise OptionError(f"shard {index} of {count} does not exist")
    return list(items[index::count])
