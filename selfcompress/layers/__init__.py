"""Keras layers with learnable per-channel compression."""

from selfcompress.layers.base import CompressedLayer
from selfcompress.layers.conv import Conv1D, Conv2D, DepthwiseConv2D
from selfcompress.layers.core import Dense

__all__ = ["CompressedLayer", "Dense", "Conv1D", "Conv2D", "DepthwiseConv2D"]
