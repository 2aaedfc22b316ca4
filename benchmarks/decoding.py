"""The command line shared by the decoding tools (benchmarks.translate, benchmarks.caption): one checkpoint or
several (an ensemble), a beam width and a device."""
import argparse


def decoding_parser(prog, doc, checkpoint_help):
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, help=checkpoint_help)
    parser.add_argument("--beam", type=int, help="beam width (default: the checkpoint's preset)")
    parser.add_argument("--device", default="auto")
    return parser


def parse_decoding_args(parser, argv):
    args = parser.parse_args(argv)
    if args.beam is not None and args.beam < 1:
        parser.error(f"--beam must be >= 1, got {args.beam}")
    return args
