"""Listen, Attend and Spell (Chan et al. 2015), character level."""
from .config import LASDataConfig, LASOptimConfig, LASRunConfig, LASTrainConfig, teacher_forcing_rate
from .data import CharVocabulary, SpeechDataset, Utterance, read_split, write_split
from .decode import beam_search, greedy_decode
from .metrics import alignment_accuracy, cer, monotonic_focus, wer
from .model import LAS, Attention, LASConfig, Listener, Speller
from .toy import ToyConfig
from .trainer import LASTrainer, load_las
from .transcribe import transcribe

__all__ = ["LAS", "Attention", "CharVocabulary", "LASConfig", "LASDataConfig", "LASOptimConfig", "LASRunConfig",
           "LASTrainConfig", "LASTrainer", "Listener", "SpeechDataset", "Speller", "ToyConfig", "Utterance",
           "alignment_accuracy", "beam_search", "cer", "greedy_decode", "load_las", "monotonic_focus", "read_split",
           "teacher_forcing_rate", "transcribe", "wer", "write_split"]
