"""diffusers model hooks held for the duration of one call: how C-T-S and the speed levers change a model.

A hook joins whatever else diffusers' registry holds on the module (group offload, layerwise casting, caches) and
leaves it as it was: after the last hook goes, the module has its class's ``forward`` again, no instance-level one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.hooks import HookRegistry, ModelHook


def _class_forward_left(module: torch.nn.Module) -> bool:
    """Whether ``module.forward`` is an instance attribute holding only the class's own method (what the registry
    leaves after its last hook goes), not someone else's wrapper (accelerate's offload hooks, a compiled forward)."""
    own = module.__dict__.get("forward")
    return getattr(own, "__self__", None) is module and getattr(own, "__func__", None) is type(module).forward


@contextmanager
def hooks_held(hooks: list[tuple[torch.nn.Module, ModelHook]], name: str) -> Iterator[None]:
    """Register each ``(module, hook)`` under ``name`` for the ``with`` body; remove them after, even on error."""
    created: list[torch.nn.Module] = []
    registered: list[torch.nn.Module] = []
    try:
        for module, hook in hooks:
            if not hasattr(module, "_diffusers_hook"):
                created.append(module)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
            registered.append(module)
        yield
    finally:
        for module in reversed(registered):
            registry = module._diffusers_hook
            registry.remove_hook(name, recurse=False)
            if not registry.hooks and _class_forward_left(module):
                del module.__dict__["forward"]
        for module in created:
            if not module._diffusers_hook.hooks:
                del module._diffusers_hook
