"""C-T-S, the Center-Total-Surrounding decoupled cross-attention: the attention processor and the trainable adapter.

May import the shared modules only.
"""
