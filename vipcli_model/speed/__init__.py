"""Speed levers: classifier-free guidance in an interval of noise levels and DeepCache-style feature caching (diffusers
hooks held for one call, so they compose with offloading), and fusing a few-step LoRA into the weights (``fast``).

May import cts and the shared modules.
"""
