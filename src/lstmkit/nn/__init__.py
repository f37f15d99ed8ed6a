"""Regularizers of AWD-LSTM (Merity et al. 2017) as small composable modules."""
from .dropout import LockedDropout, embedding_dropout
from .weight_drop import WeightDrop, drop_connect

__all__ = ["LockedDropout", "embedding_dropout", "WeightDrop", "drop_connect"]
