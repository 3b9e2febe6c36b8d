"""selfcompress: Keras 3 networks that learn to make themselves small."""

from selfcompress import native_logs

native_logs.import_tensorflow()  # before anything imports it

from selfcompress import compressors
from selfcompress import layers
from selfcompress.callbacks import (CompressionMonitor, TrainingDivergedError,
                                    WithinBudget)
from selfcompress.convert import compress
from selfcompress.exporting import export
from selfcompress.graph import ChannelGraph
from selfcompress.model import SelfCompressingModel
from selfcompress.saving import load_model
from selfcompress.shed_training import fit_and_shed
from selfcompress.shedding import shed
from selfcompress.accounting import SizeReport, size, summary

__version__ = "0.1.0"

__all__ = [
    "ChannelGraph", "CompressionMonitor", "SelfCompressingModel", "SizeReport",
    "TrainingDivergedError", "compress", "export", "fit_and_shed", "compressors", "layers", "load_model", "shed", "size",
    "summary", "WithinBudget",
]
