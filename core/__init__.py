"""Shared dropout-LSTM core: the model, the trainer and the utilities every task uses."""
from core.lstm import SCHEMES, DropoutLSTM, init_uniform, lstm_cell
from core.trainer import StepOutput, Trainer, TrainConfig

__all__ = ["SCHEMES", "DropoutLSTM", "init_uniform", "lstm_cell", "StepOutput", "Trainer", "TrainConfig"]
