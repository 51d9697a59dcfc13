"""Fine-tuning C-T-S on a folder of images (`vip train`).

config.py     TrainConfig: every setting, TOML loading, one error for every problem
masks.py      the training mask sampler (ratio, one-side, two-side, irregular)
data.py       folder scan (broken images reported), captions, one example, the seeded data order
schedule.py   warmup + cosine learning rate, a pure function of the step
ema.py        exponential moving average of the trainable weights
checkpoint.py atomic checkpoints, rolling window, resume
recipe.py     setup / train / save_checkpoint / cleanup, over Hugging Face accelerate

Import the heavy parts from their modules (``from vipcli_model.training.recipe import run_training``);
this package imports nothing on its own so that ``vip train --help`` stays fast.
"""
