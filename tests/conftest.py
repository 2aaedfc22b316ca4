import functools
import http.server
import random
import threading

import pytest

from tasks.lm.task import PRESETS


def write_tiny_ptb(root, lines=(300, 40, 40), seed=0):
    """A PTB-shaped corpus (ptb/ptb.{train,valid,test}.txt) with learnable structure: sentences are
    walks through a fixed successor table, so a trained model beats the uniform perplexity."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(20)] + ["<unk>", "N"]
    successors = {w: rng.sample(words, 2) for w in words}
    folder = root / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "valid", "test"), lines):
        out = []
        for _ in range(count):
            word, sentence = rng.choice(words), []
            for _ in range(rng.randint(4, 10)):
                sentence.append(word)
                word = rng.choice(successors[word])
            out.append(" " + " ".join(sentence) + " \n")
        (folder / f"ptb.{split}.txt").write_text("".join(out))
    return root


@pytest.fixture
def tiny_ptb(tmp_path):
    return write_tiny_ptb(tmp_path / "data")


@pytest.fixture
def tiny_config():
    return {**PRESETS["tiny"], "scheme": "zaremba", "seed": 1}


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1 for the duration of a test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def fp32_switches():
    """Restores torch's process-wide TF32 switches after a test that sets them (core.precision.set_fp32_math)."""
    import torch

    from core.precision import has_fp32_precision_api

    if has_fp32_precision_api():
        switches = (torch.backends.cuda.matmul, torch.backends.cudnn, torch.backends.cudnn.rnn,
                    torch.backends.cudnn.conv)
        saved = [switch.fp32_precision for switch in switches]
        yield
        for switch, value in zip(switches, saved):
            switch.fp32_precision = value
    else:
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        yield
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
