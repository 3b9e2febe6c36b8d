"""Pruning: masks in Keras variables, strategies and their sizes.

Iterative magnitude pruning (the driver) is `selfcompress.imp`.
"""

from selfcompress.pruning.mask import Mask
from selfcompress.pruning.masking import (
    KernelMask, apply, attach, kernel_shapes, kernels, mask_of, prunable)
from selfcompress.pruning.size import SparseSize, quantize_uniform, sparse_size
from selfcompress.pruning.strategies import STRATEGIES, get, layer_fractions

__all__ = [
    "KernelMask", "Mask", "STRATEGIES", "SparseSize", "apply", "attach", "get",
    "kernel_shapes", "kernels", "layer_fractions", "mask_of", "prunable",
    "quantize_uniform", "sparse_size",
]
