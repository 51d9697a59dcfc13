"""Captioning: a multimodal LLM (local transformers model or an OpenAI-compatible server) writes the Center and
Surrounding prompts of photos; questions, answer fitting, caches, and captions files for training.

May import images, models and the shared modules.
"""
