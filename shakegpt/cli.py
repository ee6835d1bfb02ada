"""Section 11 — the command line: `python -m shakegpt_utils train|sample|bench ...`, a thin layer over the functions."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

import torch

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


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", choices=("ladder", "peer", "generate"), help="what to measure")
    parser.add_argument("--preset", default="small", help="model size: gpt2, small or tiny (default: small)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step (default: 8)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the context)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps, or rounds for generate (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, compile included (default: 2)")
    parser.add_argument("--grad-accum", type=int, default=2, help="micro-steps of the ladder's last rung")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="try torch.compile")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt tokens for generate (default: 16)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), action="append", help="generate at this precision")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--out", default=None, help="JSON file (default: figures/bench_WHICH_DEVICE.json)")


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


def run_bench(args: argparse.Namespace) -> None:
    from .bench import BenchSettings, bench_generate, bench_ladder, bench_peer, save_bench

    if args.threads is not None:
        if args.threads < 1:
            raise ShakeGPTError(f"--threads must be at least 1, not {args.threads}.")
        torch.set_num_threads(args.threads)
    settings = BenchSettings(args.preset, args.batch_size, args.seq_len, args.steps, args.warmup, args.device)
    if args.which == "ladder":
        result = bench_ladder(settings, args.compile, args.grad_accum)
    elif args.which == "peer":
        result = bench_peer(settings)
    else:
        dtypes = tuple(args.dtype) if args.dtype else None
        result = bench_generate(args.preset, args.new_tokens, args.prompt_len, args.steps, dtypes, args.device)
    save_bench(result, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m shakegpt_utils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_train_arguments(commands.add_parser("train", help="train GPT-2 on Shakespeare"))
    add_sample_arguments(commands.add_parser("sample", help="generate text from a checkpoint"))
    add_bench_arguments(commands.add_parser("bench", help="measure training and generation speed"))
    return parser


COMMANDS = {"train": run_train, "sample": run_sample, "bench": run_bench}


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
