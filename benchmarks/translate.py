"""Translate sentences with trained translation checkpoints (one, or several as an ensemble).

    python -m benchmarks.translate --checkpoint runs/mt/cpu/zaremba-p0.3-seed1/best.pt --text "A dog runs on the beach."
    echo "Two men are talking." | python -m benchmarks.translate --checkpoint a/best.pt --checkpoint b/best.pt --beam 1
"""
import sys

from benchmarks.decoding import decoding_parser, parse_decoding_args
from core.download import DataError
from core.utils import pick_device
from tasks.mt import detokenize, load_checkpoint, translate
from tasks.parallel import moses_tokenize


def main(argv=None):
    parser = decoding_parser("python -m benchmarks.translate", __doc__, "a best.pt from a --task mt run; repeat "
                             "for an ensemble (same vocabularies)")
    parser.add_argument("--text", action="append", help="a sentence to translate (repeatable); default: stdin lines")
    args = parse_decoding_args(parser, argv)
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
