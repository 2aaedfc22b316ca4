"""CNN -> LSTM image captioning (paper section 4.4, Table 4): Show and Tell (Vinyals et al., 2015) with the
paper's dropout.

A frozen ImageNet CNN maps the image to a vector (tasks/captions_data.py computes and caches it); its linear
projection is the decoder LSTM's first input, then the words. The output after the image step is not scored;
from <bos> on, every step predicts the next word. The variant's scheme and p act on the non-recurrent
connections (the image / word embedding going in, before the softmax), never on h_{t-1} -> h_t.

The Task adapter (data, batches, beam decoding, COCO metrics, presets) is issue 8's next step; this file holds
its model.
"""
import torch
import torch.nn as nn

from core import DropoutLSTM


class CaptionModel(nn.Module):
    def __init__(self, feature_dim, vocab_size, emb, hidden, layers=1, dropout=0.0, scheme="zaremba"):
        super().__init__()
        self.image_proj = nn.Linear(feature_dim, emb)
        self.embed = nn.Embedding(vocab_size, emb)
        self.rnn = DropoutLSTM(emb, hidden, layers, dropout, scheme)
        self.out = nn.Linear(hidden, vocab_size)

    def start(self, features):
        """Feed the image vectors (B, feature_dim): the decoder state before <bos>."""
        _, state = self.rnn(self.image_proj(features)[:, None])
        return state

    def forward(self, features, tokens_in):
        """Teacher forcing: features (B, D), tokens_in (B, T) starting with <bos> -> logits (B, T, V), the
        prediction of each next word. The image vector is the first input of the same LSTM pass."""
        inputs = torch.cat([self.image_proj(features)[:, None], self.embed(tokens_in)], dim=1)
        output, _ = self.rnn(inputs)
        return self.out(output[:, 1:])

    def step(self, tokens, state):
        """One decoding step for core.beam_search: tokens (N,) -> (logits (N, V), state)."""
        output, state = self.rnn.step(self.embed(tokens), state)
        return self.out(output), state
