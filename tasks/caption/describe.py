"""Caption image files with trained captioning checkpoints (one, or several as an ensemble).

    python -m tasks.caption.describe --checkpoint runs/caption/cpu/zaremba-p0.5-seed1/best.pt photo.jpg
    python -m tasks.caption.describe --checkpoint a/best.pt --checkpoint b/best.pt --beam 1 *.jpg

The images go through the checkpoint's frozen encoder (the same preprocessing as in training), then beam search.
"""
import sys

from core.download import DataError
from core.utils import decoding_parser, parse_decoding_args, pick_device
from tasks.base import load_members
from tasks.caption.encoders import encode_images, make_encoder
from tasks.caption.task import describe


def main(argv=None):
    parser = decoding_parser("python -m tasks.caption.describe", __doc__, "a best.pt from a --task caption run; "
                             "repeat for an ensemble (same vocabulary and encoder)")
    parser.add_argument("images", nargs="+", help="image files")
    args = parse_decoding_args(parser, argv)
    try:
        device = pick_device(args.device)
        task, models = load_members(args.checkpoint, device, "caption", same_config=("encoder",))
        features = encode_images(args.images, make_encoder(task.config), device)
        for path, words in zip(args.images, describe(models, features, task.vocab, task.config, device,
                                                      beam=args.beam)):
            print(f"{path}\t{' '.join(words)}")
    except (OSError, ValueError, DataError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
