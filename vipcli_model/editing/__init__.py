"""Instruction editing (``vip edit``): an InstructPix2Pix model changes photos by a written instruction, the
change kept at full resolution; optionally the captioner rewrites the instruction first (MGIE's idea).

May import images, models, captioning, outpainting and the shared modules.
"""
