"""Translate sentences with trained translation checkpoints (one, or several as an ensemble).

    python -m benchmarks.translate --checkpoint runs/mt/cpu/zaremba-p0.3-seed1/best.pt --text "A dog runs on the beach."
    echo "Two men are talking." | python -m benchmarks.translate --checkpoint a/best.pt --checkpoint b/best.pt --beam 1
"""
import argparse
import sys

from core.download import DataError
from core.utils import pick_device
from tasks.mt import detokenize, load_checkpoint, translate
from tasks.parallel import moses_tokenize


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.translate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="a best.pt from a --task mt run; repeat for an ensemble (same vocabularies)")
    parser.add_argument("--text", action="append", help="a sentence to translate (repeatable); default: stdin lines")
    parser.add_argument("--beam", type=int, help="beam width (default: the checkpoint's preset, 12 for cpu)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.beam is not None and args.beam < 1:
        parser.error(f"--beam must be >= 1, got {args.beam}")
    try:
        device = pick_device(args.device)
        loaded = [load_checkpoint(path, device) for path in args.checkpoint]
        model, src_vocab, tgt_vocab, config = loaded[0]
        if any((s.words, t.words) != (src_vocab.words, tgt_vocab.words) for _, s, t, _ in loaded[1:]):
            raise ValueError("ensemble members must share their vocabularies (train them on the same data preset)")
        lines = args.text or [line.strip() for line in sys.stdin if line.strip()]
        tokens = moses_tokenize(lines, config["src"])
        outputs = translate([m for m, *_ in loaded], src_vocab, tgt_vocab, tokens, config, device, beam=args.beam)
        print("\n".join(detokenize(outputs, config["tgt"])))
    except (OSError, ValueError, DataError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
