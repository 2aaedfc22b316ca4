"""Shared dropout-LSTM core: the model, the trainer, sequences, vocabulary, beam search and utilities."""
from core.beam import beam_search, select_state
from core.lstm import DropoutLSTM, init_uniform, lstm_cell
from core.schemes import SCHEMES, Scheme, register_scheme
from core.sequence import bucket_batches, pad_sequences, sequence_nll
from core.step import StepOutput, TrainConfig
from core.trainer import Trainer
from core.vocab import Vocab

__all__ = ["SCHEMES", "Scheme", "register_scheme", "DropoutLSTM", "init_uniform", "lstm_cell", "StepOutput",
           "Trainer", "TrainConfig", "Vocab", "beam_search", "select_state", "bucket_batches", "pad_sequences", "sequence_nll"]
