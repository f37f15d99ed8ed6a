"""AWD-LSTM word language model (Merity et al. 2017)."""
from .config import DataConfig, LMConfig, OptimConfig, TrainConfig
from .data import BPTTIterator, Corpus, Vocabulary, batchify, load_corpus, load_npy, load_text, load_wikitext
from .evaluate import draw_contexts, fixed_context_nll, generation_nll, stream_loss
from .generate import TestLanguageModel, generate
from .model import AWDLSTM, AWDLSTMConfig
from .optim import NTASGD, should_switch_to_asgd
from .load import load_model
from .trainer import LanguageModelDataLoader, LanguageModelTrainer

__all__ = ["AWDLSTM", "AWDLSTMConfig", "BPTTIterator", "Corpus", "DataConfig", "LMConfig", "LanguageModelDataLoader",
           "LanguageModelTrainer", "NTASGD", "OptimConfig", "TestLanguageModel", "TrainConfig", "Vocabulary", "batchify",
           "draw_contexts", "fixed_context_nll", "generate", "generation_nll", "load_corpus", "load_model", "load_npy", "load_text",
           "load_wikitext", "should_switch_to_asgd", "stream_loss"]
