"""The published peer the LM speed rows are measured against: pytorch/examples word_language_model, as
published (RNNModel with an LSTM, time-major): dropout on the embeddings, nn.LSTM's inter-layer dropout and
dropout on the LSTM output (the connections our `zaremba` scheme drops), log_softmax + NLLLoss, gradient
clipping and its manual SGD update."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ReferenceLM(nn.Module):
    """pytorch/examples word_language_model/model.py RNNModel (LSTM), as published: time-major."""

    def __init__(self, vocab, hidden, layers, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens, hidden):
        emb = self.drop(self.encoder(tokens))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.decoder.out_features)
        return F.log_softmax(decoded, dim=1), hidden


def reference_stepper(config, vocab_size, device):
    """(train(batch), evaluate(batch)) of the reference on our (inputs, targets) batches, batch-first."""
    model = ReferenceLM(vocab_size, config["hidden"], config["layers"], config["dropout"]).to(device)
    criterion = nn.NLLLoss()
    hidden = [None]

    def train(batch):  # x, y: (B, T) -> time-major as in the reference; its train() loop body
        x, y = batch
        model.train()
        h = None if hidden[0] is None else tuple(s.detach() for s in hidden[0])  # repackage_hidden
        model.zero_grad()
        output, hidden[0] = model(x.t(), h)
        loss = criterion(output, y.t().reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-config["lr"])

    @torch.no_grad()
    def evaluate(batch):
        x, y = batch
        model.eval()
        output, _ = model(x.t(), None)
        criterion(output, y.t().reshape(-1))

    train.model = evaluate.model = model  # for inspection (what was timed)
    return train, evaluate
