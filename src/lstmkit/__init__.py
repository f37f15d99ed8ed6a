"""lstmkit: AWD-LSTM language models and Listen, Attend and Spell, readable and fast, on PyTorch."""
from .errors import InputError
from .lm import AWDLSTM, AWDLSTMConfig, LanguageModelDataLoader, LanguageModelTrainer, TestLanguageModel, load_model

__version__ = "0.1.0"
__all__ = ["AWDLSTM", "AWDLSTMConfig", "InputError", "LanguageModelDataLoader", "LanguageModelTrainer",
           "TestLanguageModel", "load_model"]
