"""Section 11 — the command line: `python -m shakegpt_utils train|sample|bench ...`, a thin layer over the functions."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from .config import ShakeGPTError
from .train import TrainConfig, train


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump), with a non-zero exit."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def field_type(annotation: str) -> type:
    """The Python type behind a TrainConfig annotation such as 'int | None'."""
    base = annotation.replace(" | None", "").strip()
    return {"int": int, "float": float, "str": str, "bool": bool}[base]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field: --batch-size for batch_size, --compile/--no-compile for booleans."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = field_type(f.type)
        default = f.default if f.default is not MISSING else None
        help_text = f.metadata["help"] + (f" (default: {default})" if default is not None else "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=default, help=help_text)


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint file, e.g. runs/shakespeare/best.pt")
    parser.add_argument("--prompt", default="ROMEO:", help="text to continue ('' starts from <|endoftext|>)")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="auto")


def run_train(args: argparse.Namespace) -> None:
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    summary = train(cfg)
    if summary.get("sample") is not None:
        print(f"\nsummary: {cfg.out}/summary.json | best validation loss {summary['best_val_loss']:.4f}")


def run_sample(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .hardware import get_device
    from .sampling import sample_text

    if args.num_samples < 1 or args.max_new_tokens < 0 or args.temperature < 0 or args.top_k < 0:
        raise ShakeGPTError("--num-samples must be >= 1; --max-new-tokens, --temperature and --top-k >= 0.")
    model = load_model(args.ckpt, get_device(args.device))
    texts = sample_text(
        model, args.prompt, args.max_new_tokens, args.temperature, args.top_k or None, args.seed, args.num_samples
    )
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1} ---\n{text}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m shakegpt_utils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_train_arguments(commands.add_parser("train", help="train GPT-2 on Shakespeare"))
    add_sample_arguments(commands.add_parser("sample", help="generate text from a checkpoint"))
    return parser


COMMANDS = {"train": run_train, "sample": run_sample}


def main(argv: list[str] | None = None) -> int:
    """Run a command; a ShakeGPTError becomes one line on stderr and exit status 1."""
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except ShakeGPTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run again with --resume to continue from the last checkpoint.", file=sys.stderr)
        return 130
    return 0
