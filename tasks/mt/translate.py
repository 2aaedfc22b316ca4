"""Translate sentences with trained translation checkpoints (one, or several as an ensemble).

    python -m tasks.mt.translate --checkpoint runs/mt/cpu/zaremba-p0.2-seed1/best.pt --text "A dog runs on the beach."
    echo "Two men are talking." | python -m tasks.mt.translate --checkpoint a/best.pt --checkpoint b/best.pt --beam 1
"""
import sys

from core.download import DataError
from core.utils import decoding_parser, parse_decoding_args, pick_device
from tasks.base import load_members
from tasks.mt.data import moses_tokenize
from tasks.mt.task import detokenize, translate


def main(argv=None):
    parser = decoding_parser("python -m tasks.mt.translate", __doc__, "a best.pt from a --task mt run; repeat "
                             "for an ensemble (same vocabularies)")
    parser.add_argument("--text", action="append", help="a sentence to translate (repeatable); default: stdin lines")
    args = parse_decoding_args(parser, argv)
    try:
        device = pick_device(args.device)
        task, models = load_members(args.checkpoint, device, "mt")
        lines = args.text or [line.strip() for line in sys.stdin if line.strip()]
        tokens = moses_tokenize(lines, task.config["src"])
        outputs = translate(models, task.src_vocab, task.tgt_vocab, tokens, task.config, device, beam=args.beam)
        print("\n".join(detokenize(outputs, task.config["tgt"])))
    except (OSError, ValueError, DataError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
