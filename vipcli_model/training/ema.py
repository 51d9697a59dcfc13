"""An exponential moving average of the trainable weights (optional, ``--ema``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch


class ExponentialMovingAverage:
    """fp32 shadow copies of named parameters, updated after every optimizer step.

    The decay ramps up as ``min(decay, (1 + updates) / (10 + updates))`` (as diffusers' EMAModel
    does), so early, still-random weights are forgotten quickly.
    """

    def __init__(self, parameters: Mapping[str, torch.nn.Parameter], decay: float) -> None:
        self.parameters = dict(parameters)
        self.decay = decay
        self.updates = 0
        self.shadow = {name: parameter.detach().float().clone() for name, parameter in self.parameters.items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for name, parameter in self.parameters.items():
            self.shadow[name].lerp_(parameter.detach().float(), 1.0 - decay)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.shadow, "__updates__": torch.tensor(self.updates)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])
        self.updates = int(state["__updates__"])

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model for the ``with`` body (validation, final save), then the live ones."""
        with torch.no_grad():
            saved = {name: parameter.detach().clone() for name, parameter in self.parameters.items()}
            for name, parameter in self.parameters.items():
                parameter.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, parameter in self.parameters.items():
                    parameter.copy_(saved[name])

    @torch.no_grad()
    def copy_to_parameters(self) -> None:
        """Put the averaged weights into the model for good (the end of a run, after its last checkpoint)."""
        for name, parameter in self.parameters.items():
            parameter.copy_(self.shadow[name])
