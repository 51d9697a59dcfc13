"""Image files: load and validate (orientation, modes, sizes), save atomically with metadata, find inputs, plan
output names.

May import the shared modules only (errors, config, files, prompts, device, batch).
"""
