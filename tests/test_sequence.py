import pytest
import torch
import torch.nn.functional as F

from core import Vocab, bucket_batches, pad_sequences, sequence_nll
from core.vocab import SPECIALS


def test_vocab_cutoff_size_cap_and_specials():
    sentences = [["a", "b", "a", "c"], ["a", "b", "d"], ["<unk>", "a"]]
    vocab = Vocab.build(sentences, min_freq=2)
    assert vocab.words == list(SPECIALS) + ["a", "b"]  # c and d are seen once; <unk> in the text is no word
    assert (vocab.pad, vocab.unk, vocab.bos, vocab.eos) == (0, 1, 2, 3)
    assert Vocab.build(sentences, max_size=5).words == list(SPECIALS) + ["a"]  # the most frequent first
    assert Vocab.build(sentences).words[4:] == ["a", "b", "c", "d"]  # ties alphabetically
    assert vocab.encode(["a", "zebra", "b"], bos=True, eos=True) == [2, 4, 1, 5, 3]
    assert vocab.decode([2, 4, 1, 5, 3, 4, 0]) == ["a", "<unk>", "b"]  # stops at <eos>, drops <bos>
    with pytest.raises(ValueError, match="min_freq"):
        Vocab.build(sentences, min_freq=0)
    with pytest.raises(ValueError, match="start with the specials"):
        Vocab(["a", "<pad>"])


def test_vocab_round_trips_through_a_checkpoint(tmp_path):
    vocab = Vocab.build([["le", "chat", "le"]])
    torch.save({"vocab": vocab.state_dict()}, tmp_path / "ckpt.pt")
    loaded = Vocab.from_state_dict(torch.load(tmp_path / "ckpt.pt")["vocab"])
    assert loaded == vocab and loaded.encode(["chat", "le"]) == vocab.encode(["chat", "le"])


def test_pad_sequences():
    padded, lengths = pad_sequences([[5, 6, 7], [8], [9, 10]], pad=0)
    assert padded.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]] and lengths.tolist() == [3, 1, 2]


@pytest.mark.parametrize("shuffle", [False, True])
def test_bucketed_batches_cover_every_example_once_and_group_similar_lengths(shuffle):
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 60, (1003,), generator=gen).tolist()
    batches = bucket_batches(lengths, 16, shuffle=shuffle, bucket_batches=8, generator=torch.Generator().manual_seed(1))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1003))  # every sentence exactly once
    assert all(1 <= len(b) <= 16 for b in batches)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 8  # random batches would spread over about 50
    if not shuffle:
        assert flat == sorted(range(1003), key=lambda i: (lengths[i], i))


def test_shuffled_batches_repeat_for_a_seed_and_change_across_epochs():
    lengths = list(range(200))
    first = bucket_batches(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(3))
    again = bucket_batches(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(3))
    assert first == again
    torch.manual_seed(3)  # without a generator: torch's global RNG, which the trainer seeds and checkpoints
    epoch1, epoch2 = bucket_batches(lengths, 8, shuffle=True), bucket_batches(lengths, 8, shuffle=True)
    assert epoch1 != epoch2


def test_masked_loss_ignores_padding_and_equals_the_unpadded_computation():
    torch.manual_seed(0)
    lengths = [5, 2, 3]
    logits = torch.randn(3, 5, 7)
    targets = torch.randint(1, 7, (3, 5))
    for row, n in enumerate(lengths):
        targets[row, n:] = 0
    garbage = logits.clone()
    garbage[1, 2:] = 1e4  # whatever the model says at padded positions does not count
    nll, count = sequence_nll(garbage, targets, pad=0)
    expected = sum(F.cross_entropy(logits[r, :n], targets[r, :n], reduction="sum") for r, n in enumerate(lengths))
    assert count == sum(lengths)
    assert torch.allclose(nll, expected)
