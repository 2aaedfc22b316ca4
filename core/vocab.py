"""A word vocabulary: built from training tokens, with <pad>, <unk>, <bos>, <eos>, saved with checkpoints."""
from collections import Counter

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)


class Vocab:
    """Maps words to ids. The specials come first, so <pad> is always id 0."""

    def __init__(self, words):
        words = list(words)
        if tuple(words[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with the specials {SPECIALS}, got {words[:4]}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary may not list a word twice")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        self.pad, self.unk, self.bos, self.eos = (self.index[s] for s in SPECIALS)

    @classmethod
    def build(cls, sentences, min_freq=1, max_size=None):
        """Words of `sentences` (lists of tokens) seen at least `min_freq` times, the most frequent first,
        at most `max_size` words in all (specials included); ties are broken alphabetically."""
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size <= len(SPECIALS):
            raise ValueError(f"max_size must leave room beyond the {len(SPECIALS)} specials, got {max_size}")
        counts = Counter(w for sentence in sentences for w in sentence)
        for special in SPECIALS:
            counts.pop(special, None)
        kept = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[: max_size - len(SPECIALS)]
        return cls(list(SPECIALS) + kept)

    def __len__(self):
        return len(self.words)

    def __contains__(self, word):
        return word in self.index

    def __eq__(self, other):
        return isinstance(other, Vocab) and self.words == other.words

    def encode(self, tokens, bos=False, eos=False):
        ids = [self.index.get(w, self.unk) for w in tokens]
        return ([self.bos] if bos else []) + ids + ([self.eos] if eos else [])

    def decode(self, ids, strip=True):
        """Ids -> words; with `strip`, stop at <eos> and drop <bos>/<pad>."""
        words = []
        for i in ids:
            i = int(i)
            if strip and i == self.eos:
                break
            if strip and i in (self.bos, self.pad):
                continue
            words.append(self.words[i])
        return words

    def state_dict(self):
        return {"words": list(self.words)}

    @classmethod
    def from_state_dict(cls, state):
        return cls(state["words"])
