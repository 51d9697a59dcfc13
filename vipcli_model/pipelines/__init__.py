"""The outpainting pipelines, one per model family, each a subclass of its diffusers pipeline with region prompts:
``VipOutpaintPipeline`` (SD-1.x/2.x), ``VipOutpaintXLPipeline`` (SDXL), ``VipOutpaintFluxFillPipeline`` (FLUX.1 Fill),
``VipOutpaintXLUnionPipeline`` (any SDXL model with ControlNet Union), ``VipOutpaintFlux2KleinPipeline`` (FLUX.2
[klein]).

May import cts, speed and the shared modules.
"""
