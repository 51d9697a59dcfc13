"""Outpainting one image and many: canvas geometry, paste-back and colour match, the detail pass, the one-image
``Outpainter``, the output metadata, and ``outpaint_images`` (files and folders to files).

May import images, cts, speed, pipelines, models, captioning and the shared modules.
"""
