"""Keras layers with learnable per-channel compression."""

from selfcompress.layers.attention import MultiHeadAttention
from selfcompress.layers.base import CompressedLayer
from selfcompress.layers.conv import (
    Conv1D, Conv1DTranspose, Conv2D, Conv2DTranspose, Conv3D, Conv3DTranspose,
    DepthwiseConv1D, DepthwiseConv2D)
from selfcompress.layers.core import Dense, EinsumDense, Embedding
from selfcompress.layers.select import SelectChannels

#: Every self-compressing layer class; `compress()` replaces each one's Keras
#: parent with it.
ALL = (Dense, EinsumDense, Embedding, Conv1D, Conv2D, Conv3D, Conv1DTranspose, Conv2DTranspose,
       Conv3DTranspose, DepthwiseConv1D, DepthwiseConv2D)

#: Layers that hold self-compressing layers (not themselves a kind the
#: channel graph follows: `shed()` keeps them whole).
CONTAINERS = (MultiHeadAttention,)

__all__ = (["CompressedLayer", "ALL", "CONTAINERS", "SelectChannels"]
           + [c.__name__ for c in ALL + CONTAINERS])
