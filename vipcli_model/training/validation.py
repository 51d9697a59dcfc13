"""The validation outpaint of a run: a fixed image with a fixed seed, saved as ``validation/step_N.png``
every ``validate_every`` steps, so a run's progress can be seen, not only read from the loss."""

from __future__ import annotations

from pathlib import Path

from vipcli_model.cts.attention import CTSAdapter
from vipcli_model.training.config import TrainConfig
from vipcli_model.training.data import TrainingImage
from vipcli_model.training.run_files import VALIDATION


class Validation:
    """Outpaints ``validation_image`` (default: the first training image) with the training pipeline.

    The outpainter shares the run's pipeline and adapter (no second copy of the model); it is made
    on first use. The caller puts the models in eval mode (and the EMA weights in) around ``outpaint``.
    """

    def __init__(
        self, config: TrainConfig, pipe, adapter: CTSAdapter, images: list[TrainingImage], run_dir: Path
    ) -> None:
        self.config = config
        self.pipe = pipe
        self.adapter = adapter
        self.images = images
        self.run_dir = run_dir
        self._outpainter = None

    def source(self) -> Path:
        return Path(self.config.validation_image) if self.config.validation_image else self.images[0].path

    def outpaint(self):
        """The ``OutpaintResult`` of the validation image (its caption's prompts, else none)."""
        from vipcli_model.config import BlendConfig, ExpansionConfig, GenerationConfig, ModelConfig
        from vipcli_model.images.io import load_image
        from vipcli_model.outpainting.outpainter import Outpainter
        from vipcli_model.prompts import RegionPrompts

        if self._outpainter is None:
            self._outpainter = Outpainter(ModelConfig(model=self.config.model), pipeline=self.pipe)
            self._outpainter.adapter = self.adapter
        source = self.source()
        prompts = {image.path: image.prompts for image in self.images}.get(source) or RegionPrompts()
        return self._outpainter.outpaint(
            load_image(source).image,
            prompts,
            expansion=ExpansionConfig(ratio="1.5x"),
            generation=GenerationConfig(steps=self.config.validation_steps, seed=self.config.seed),
            blend=BlendConfig(),
            source=str(source),
        )

    def save(self, result, step: int) -> Path:
        from vipcli_model.images.io import save_image

        path = self.run_dir / VALIDATION / f"step_{step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(result.images[0], path, metadata={**result.metadata, "training_step": step}, overwrite=True)
        return path

    def close(self) -> None:
        self._outpainter = None
