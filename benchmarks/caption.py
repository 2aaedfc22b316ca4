"""Caption image files with trained captioning checkpoints (one, or several as an ensemble).

    python -m benchmarks.caption --checkpoint runs/caption/cpu/zaremba-p0.5-seed1/best.pt photo.jpg
    python -m benchmarks.caption --checkpoint a/best.pt --checkpoint b/best.pt --beam 1 *.jpg

The images go through the checkpoint's frozen encoder (the same preprocessing as in training), then beam search.
"""
import sys

from benchmarks.decoding import decoding_parser, parse_decoding_args
from core.download import DataError
from core.utils import pick_device
from tasks.caption import describe, load_checkpoint
from tasks.captions_data import encode_images, make_encoder


def main(argv=None):
    parser = decoding_parser("python -m benchmarks.caption", __doc__, "a best.pt from a --task caption run; repeat "
                             "for an ensemble (same vocabulary and encoder)")
    parser.add_argument("images", nargs="+", help="image files")
    args = parse_decoding_args(parser, argv)
    try:
        device = pick_device(args.device)
        loaded = [load_checkpoint(path, device) for path in args.checkpoint]
        _, vocab, config = loaded[0]
        if any((v.words, c["encoder"]) != (vocab.words, config["encoder"]) for _, v, c in loaded[1:]):
            raise ValueError("ensemble members must share their vocabulary and encoder (train them on one preset)")
        features = encode_images(args.images, make_encoder(config), device)
        for path, words in zip(args.images, describe([m for m, _, _ in loaded], features, vocab, config, device,
                                                      beam=args.beam)):
            print(f"{path}\t{' '.join(words)}")
    except (OSError, ValueError, DataError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
