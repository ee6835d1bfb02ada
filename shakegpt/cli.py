"""The command line: `python -m shakegpt_utils train|sample|bench|space|push ...`, a thin layer over the functions. The
flags of `train` and `bench` are made from the fields of TrainConfig and BenchSettings, so they cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .basics import ShakeGPTError, check_at_least, check_fraction

CKPT_HELP = "checkpoint file, e.g. runs/shakespeare/best.pt"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser that reports a bad command line in one line (no usage dump) and exits with status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def field_type(annotation: str) -> type:
    """The Python type behind a dataclass annotation such as 'int | None'."""
    return {"int": int, "float": float, "str": str, "bool": bool}[annotation.replace(" | None", "").strip()]


def flag_fields(settings_class: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that the command line offers: those its `flags()` names, or all."""
    names = settings_class.flags() if hasattr(settings_class, "flags") else None
    return [f for f in dataclasses.fields(settings_class) if names is None or f.name in names]


def add_dataclass_arguments(parser: argparse.ArgumentParser, settings_class: type) -> None:
    """One flag per field of `settings_class` (see flag_fields): --batch-size for batch_size, --compile/--no-compile
    for booleans."""
    for f in flag_fields(settings_class):
        flag, kind = "--" + f.name.replace("_", "-"), field_type(f.type)
        help_text = f.metadata["help"] + (f" (default: {f.default})" if f.default is not None else "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=f.default, help=help_text)


def settings_from(args: argparse.Namespace, settings_class: type):
    """The dataclass `settings_class` filled from the parsed flags; fields that are not flags keep their defaults."""
    return settings_class(**{f.name: getattr(args, f.name) for f in flag_fields(settings_class)})


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help=CKPT_HELP)
    parser.add_argument("--prompt", default="ROMEO:", help="text to continue ('' starts from <|endoftext|>)")
    parser.add_argument("--num-samples", type=int, default=1)
    from .sampling import SAMPLING_DEFAULTS as DEFAULTS

    parser.add_argument("--max-new-tokens", type=int, default=DEFAULTS["max_new_tokens"])
    parser.add_argument("--temperature", type=float, default=DEFAULTS["temperature"], help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=DEFAULTS["top_k"], help="sample among the k most likely (0: all)")
    parser.add_argument(
        "--top-p",
        type=float,
        default=DEFAULTS["top_p"],
        help="then among the fewest whose probabilities reach p (1: all)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--memorisation",
        action="store_true",
        help="after each sample, how much of what the model wrote is copied verbatim from its training text",
    )


def run_train(args: argparse.Namespace) -> None:
    from .train import train
    from .train_settings import TrainConfig

    cfg = settings_from(args, TrainConfig)
    summary = train(cfg)
    if summary.get("sample") is not None:
        print(f"\nsummary: {cfg.out}/summary.json | best validation loss {summary['best_val_loss']:.4f}")


def run_sample(args: argparse.Namespace) -> None:
    from .checkpoint import load_checkpoint, model_from_checkpoint, training_text
    from .hardware import get_device
    from .memorisation import memorisation_line
    from .sampling import sample_text

    check_at_least("num_samples", args.num_samples, 1)
    for name in ("max_new_tokens", "temperature", "top_k"):
        check_at_least(name, getattr(args, name), 0)
    check_fraction("top_p", args.top_p)
    checkpoint = load_checkpoint(args.ckpt)
    model = model_from_checkpoint(checkpoint, get_device(args.device), source=args.ckpt)
    top_k = args.top_k or None
    texts = sample_text(
        model, args.prompt, args.max_new_tokens, args.temperature, top_k, args.seed, args.num_samples, args.top_p
    )
    corpus, text_file = training_text(checkpoint)
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1} ---\n{text}\n")
        if args.memorisation:  # of what the model wrote, not of the prompt
            print(f"memorisation: {memorisation_line(text[len(args.prompt) :], corpus, text_file)}\n")


def run_bench(args: argparse.Namespace) -> None:
    from .bench.ladder import bench_ladder
    from .bench.peers import bench_generate, bench_peer
    from .bench.profile import bench_profile
    from .bench.settings import BenchSettings, save_bench

    benchmarks = {"ladder": bench_ladder, "peer": bench_peer, "generate": bench_generate, "profile": bench_profile}
    benchmark = benchmarks[args.which]
    save_bench(*benchmark(settings_from(args, BenchSettings)), args.out)


def run_space(args: argparse.Namespace) -> None:
    from .hub import push_space
    from .space import build_space, folder_size, upload_command

    if args.push:  # the token and the network are checked before the Space is written
        out, url = Path(args.out), push_space(args.ckpt, args.out, args.push)
    else:
        out, url = build_space(args.ckpt, args.out), None
    print(f"wrote the Space to {out}: {folder_size(out) / 1e6:.1f} MB")
    print(f"published it: {url}" if url else f"upload it with: {upload_command(out)}")


def run_push(args: argparse.Namespace) -> None:
    from .hub import push_to_hub

    print(f"published the model: {push_to_hub(args.ckpt, args.repo)}")


def build_parser() -> argparse.ArgumentParser:
    from .bench.settings import BenchSettings
    from .train_settings import TrainConfig

    parser = OneLineParser(prog="python -m shakegpt_utils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_dataclass_arguments(commands.add_parser("train", help="train GPT-2 on Shakespeare"), TrainConfig)
    add_sample_arguments(commands.add_parser("sample", help="generate text from a checkpoint"))
    bench = commands.add_parser("bench", help="measure training and generation speed")
    bench.add_argument(
        "which",
        choices=("ladder", "peer", "generate", "profile"),
        help="what to measure (profile: where a step's time goes)",
    )
    add_dataclass_arguments(bench, BenchSettings)
    bench.add_argument(
        "--out", help="result file (JSON), its figure beside it (default: figures/bench_WHICH_DEVICE.json)"
    )
    space = commands.add_parser("space", help="write a self-contained Hugging Face Space for a checkpoint")
    space.add_argument("--ckpt", required=True, help=CKPT_HELP)
    space.add_argument("--out", required=True, help="folder to write the Space into (new or empty)")
    space.add_argument("--push", metavar="USER/NAME", help="then publish it as this Space on the Hugging Face Hub")
    push = commands.add_parser("push", help="publish a checkpoint as a transformers model on the Hugging Face Hub")
    push.add_argument("--ckpt", required=True, help=CKPT_HELP)
    push.add_argument("--repo", required=True, metavar="USER/NAME", help="model repository, created if missing")
    return parser


COMMANDS = {"train": run_train, "sample": run_sample, "bench": run_bench, "space": run_space, "push": run_push}


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
