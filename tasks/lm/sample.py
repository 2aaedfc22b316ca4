"""Sample text from a trained PTB language model (the paper's Figure 4).

    python -m tasks.lm.sample --checkpoint runs/lm/small/none-p0-seed1/best.pt --prompt "the meaning of life is"
"""
import argparse
import sys

from core.download import DataError
from core.utils import pick_device
from tasks.base import load_checkpoint
from tasks.lm.task import sample


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tasks.lm.sample", description="Sample text from a trained PTB language model.")
    parser.add_argument("--checkpoint", required=True, help="a best.pt from a --task lm run")
    parser.add_argument("--prompt", default="the meaning of life is")
    parser.add_argument("--words", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        task, model = load_checkpoint(args.checkpoint, pick_device(args.device), task="lm")
        print(sample(model, task.vocab, args.prompt, args.words, args.temperature, args.seed))
    except (OSError, ValueError, DataError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
