"""Functional kernels with no ``nn.Module`` state, one folder per op.

Each op folder holds ``reference.py`` (a readable loop or einsum: the specification) and
its fast paths (chunked/parallel torch, Triton). The op's ``__init__`` dispatches to the
fastest correct path for the device; ``backend=`` forces one. Fast paths are tested
against the reference on outputs, states and gradients in fp32 and bf16.
"""
