"""Fine-tuning C-T-S on a folder of images (`vip train`).

config.py     TrainConfig: every setting, TOML loading, one error for every problem
masks.py      the training mask sampler (ratio, one-side, two-side, irregular)
data.py       folder scan (broken images reported), captions, one example, the seeded data order
schedule.py   warmup + cosine learning rate, a pure function of the step
ema.py        exponential moving average of the trainable weights
checkpoint.py atomic checkpoints, rolling window, resume
denoiser.py   the module that trains (UNet + C-T-S adapter), per-micro-batch generator, Min-SNR weights
validation.py the validation outpaint (fixed image and seed) every validate_every steps
export.py     the LoRA weights and the diffusers model folder a lora / full run exports
run_files.py  the run folder's config.json and metrics.jsonl
events.py     TrainEvent (reported through a callback) and TrainResult
gates.py      the learned C-T-S gates at the end of a run (gates.json), and a note when they closed
recipe.py     setup / train / save_checkpoint / cleanup, over Hugging Face accelerate

Import the heavy parts from their modules (``from vipcli_model.training.recipe import run_training``);
this package imports nothing on its own so that ``vip train --help`` stays fast.
"""
