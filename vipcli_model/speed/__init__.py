"""Speed levers that change how the denoiser runs without changing its weights: classifier-free guidance in an
interval of noise levels, and DeepCache-style feature caching.

May import cts and the shared modules.
"""
