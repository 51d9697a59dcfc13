"""Any SDXL checkpoint outpaints through ControlNet Union: ``StableDiffusionXLControlNetUnionInpaintPipeline`` with
C-T-S region prompts.

The UNet is a plain text-to-image SDXL UNet (4 input channels, no mask channels); the ControlNet Union ProMax sees
the photo on its canvas with the area to generate blacked out, in its inpaint / outpaint control type (index 7 of
its 8), and the known latents are blended back every step as diffusers' inpainting does; vip then pastes the
original pixels back. Region prompts route through the C-T-S processors in the UNet's cross-attention, as on SDXL
inpainting; the ControlNet's cross-attention sees the Total prompt (diffusers passes it no attention keywords).
"""

from __future__ import annotations

import numpy as np
from diffusers import StableDiffusionXLControlNetUnionInpaintPipeline
from PIL import Image

from vipcli_model.errors import OptionError
from vipcli_model.pipelines.regions import RegionPromptsMixin, region_call
from vipcli_model.pipelines.sdxl import OutpaintXLPipelineOutput, VipOutpaintXLPipeline
from vipcli_model.speed.guidance_interval import covers_every_step

# ControlNet Union ProMax's control types (xinsir's ControlNetPlus): 0 openpose, 1 depth, 2 hed/pidi/scribble/ted,
# 3 canny/lineart/mlsd, 4 normal, 5 segment, 6 tile, 7 repaint (inpaint / outpaint). The first union release has
# the first six only.
OUTPAINT_CONTROL_MODE = 7


def outpaint_control_image(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The ControlNet's input for outpainting: ``image`` with the area to generate (mask >= 128) set to black, as
    the ProMax was trained for repaint and as the widely used outpainting demo feeds it."""
    pixels = np.array(image.convert("RGB"))
    region = np.array(mask.convert("L").resize(image.size, Image.Resampling.NEAREST)) >= 128
    pixels[region] = 0
    return Image.fromarray(pixels)


class VipOutpaintXLUnionPipeline(RegionPromptsMixin, StableDiffusionXLControlNetUnionInpaintPipeline):
    """``StableDiffusionXLControlNetUnionInpaintPipeline`` with Center / Total / Surrounding prompts.

    Called like the parent; ``control_image`` and ``control_mode`` may be left out: the control image is then the
    photo with the area to generate blacked out (``outpaint_control_image``), in the ProMax's outpaint mode (7).
    Region keywords and embeddings as ``VipOutpaintXLPipeline``.
    """

    output_class = OutpaintXLPipelineOutput
    __call__ = region_call(StableDiffusionXLControlNetUnionInpaintPipeline.__call__)
    encode_total = VipOutpaintXLPipeline.encode_total
    encode_region_texts = VipOutpaintXLPipeline.encode_region_texts

    def check_family_inputs(self, call: dict, options: dict) -> None:
        """Fill ``control_image`` / ``control_mode`` for outpainting where not given; refuse what cannot run.

        A guidance interval and the feature cache change the UNet's batch or skip its deep blocks, which the
        ControlNet's residuals (computed for every block and both guidance branches) cannot follow.
        """
        interval = options.get("guidance_interval")
        if interval is not None and call["guidance_scale"] > 1.0 and not covers_every_step(interval):
            raise OptionError(
                "`guidance_interval`: not supported with a ControlNet yet (its residuals are computed for both "
                "guidance branches at every step): leave it unset"
            )
        if options.get("deep_cache", 0) > 1:
            raise OptionError("`deep_cache`: not supported with a ControlNet yet (it feeds every UNet block): leave it")
        if call.get("control_mode") is None:
            types = int(self.controlnet.config.num_control_type)
            if types <= OUTPAINT_CONTROL_MODE:
                raise OptionError(
                    f"`controlnet`: this ControlNet Union has {types} control types and no inpaint / outpaint type "
                    f"({OUTPAINT_CONTROL_MODE}): use the ProMax (`controlnet` union)"
                )
            call["control_mode"] = OUTPAINT_CONTROL_MODE
        if call.get("control_image") is None and isinstance(call.get("image"), Image.Image):
            call["control_image"] = outpaint_control_image(call["image"], call["mask_image"])
