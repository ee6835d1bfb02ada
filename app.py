"""ShakeGPT in the browser: a Gradio page that streams Shakespeare-like text from a trained checkpoint.

Run `python app.py --ckpt runs/shakespeare/best.pt` and open http://127.0.0.1:7860. --ckpt takes a checkpoint file
or a folder holding an exported model (config.json + model.safetensors, as `export_hf` writes). Without --ckpt it
uses $SHAKEGPT_CKPT, else the exported model beside this file (the Space that `python -m shakegpt_utils space`
writes), else model.pt beside this file, else runs/shakespeare/best.pt (where `python -m shakegpt_utils train`
writes); with none of them it serves a page that says how to get one.
"""

from __future__ import annotations

import argparse
import codecs
import math
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr
import torch

from shakegpt_utils import (
    EXPORTED_FILES,
    GPT,
    SAMPLING_DEFAULTS,
    OneLineParser,
    ShakeGPTError,
    encode_prompt,
    first_line,
    generate_stream,
    get_device,
    get_tokenizer,
    load_checkpoint,
    load_exported,
    memorisation_line,
    model_from_checkpoint,
    training_text,
)

try:  # on ZeroGPU hardware (a free account's Spaces) each call of a function marked @spaces.GPU is lent a GPU
    import spaces
except ImportError:  # elsewhere the mark does nothing, so the app needs the package only in a Space
    spaces = None

APP_FOLDER = Path(__file__).resolve().parent  # in a Space: the exported model's config.json and model.safetensors
SPACE_CHECKPOINT = APP_FOLDER / "model.pt"
TRAINED_CHECKPOINT = Path("runs") / "shakespeare" / "best.pt"  # relative to the working directory, like train's --out
MAX_PROMPT_CHARS = 4000  # the model reads at most its context (block_size tokens) of it anyway
MAX_NEW_TOKENS, TEMPERATURE_MAX, TOP_K_MAX, MAX_SEED = 1000, 2.0, 500, 2**31 - 1
TOP_P_MIN = 0.01  # top-p of 0 would keep no token
DEFAULTS = {**SAMPLING_DEFAULTS, "seed": 1337}
TrainedOn = tuple[str, str | None]  # the corpus, and the text file a run trained on instead (training_text)
TINY_SHAKESPEARE: TrainedOn = training_text({})  # what a model that does not say trained on
EXAMPLES = [
    ["Hello world: tell to"],  # the course's reference prompt (notebook 07 and the reference run's samples)
    ["ROMEO:\n"],
    ["First Citizen:\nBefore we proceed any further, hear me speak.\n"],
    ["KING RICHARD III:\nNow is the winter of our discontent\n"],
    ["JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n"],
    ["HAMLET:\nTo be, or not to be"],
]
HOW_TO_GET_ONE = (
    "Train one with `python -m shakegpt_utils train` (it writes runs/shakespeare/best.pt), then run "
    "`python app.py --ckpt runs/shakespeare/best.pt`; or put a checkpoint at model.pt next to app.py, "
    "or point SHAKEGPT_CKPT at one."
)


def clamp(value: object, low: float, high: float, default: float) -> float:
    """`value` as a number within [low, high]; anything that is not a number (None, text, NaN) becomes `default`."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return default if math.isnan(number) else min(max(number, low), high)


def holds_model(path: Path) -> bool:
    """Whether `path` is a checkpoint file or a folder with an exported model's two files."""
    return path.is_file() or (path.is_dir() and all((path / name).is_file() for name in EXPORTED_FILES))


def crop_prompt(prompt: str | None) -> str:
    """The prompt as the model gets it: text (None is empty), its last MAX_PROMPT_CHARS characters."""
    return str(prompt or "")[-MAX_PROMPT_CHARS:]


def find_checkpoint(ckpt: str | None) -> Path | None:
    """--ckpt, else $SHAKEGPT_CKPT (either one must then exist), else the first that holds a model of: this folder
    (an exported model beside app.py, as in a Space), model.pt beside app.py and runs/shakespeare/best.pt, else None."""
    chosen = ckpt or os.environ.get("SHAKEGPT_CKPT")
    if chosen:
        return Path(chosen).expanduser()
    return next((path for path in (APP_FOLDER, SPACE_CHECKPOINT, TRAINED_CHECKPOINT) if holds_model(path)), None)


def load_for_app(path: Path, device: torch.device) -> tuple[GPT, str, TrainedOn]:
    """The model in `path` (a checkpoint file, or a folder with an exported model) on `device`, one line describing
    it, and the text it trained on (an exported model does not say: tiny Shakespeare); ShakeGPTError if unusable."""
    if path.is_dir():
        model, origin, trained_on = load_exported(path, device), f"{path.name}/{EXPORTED_FILES[1]}", TINY_SHAKESPEARE
    else:
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint, device, source=path)
        origin, trained_on = f"{path.name}, step {checkpoint.get('step', '?')}", training_text(checkpoint)
    c = model.config
    notice = (
        f"Model: {origin}, {model.num_params() / 1e6:.1f}M parameters "
        f"({c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide), context {c.block_size} tokens, on {device}."
    )
    return model, notice, trained_on


def stream_text(
    model: GPT,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    top_p: float | None = None,
) -> Iterator[str]:
    """The prompt and the text generated so far, after each token. The model reads the prompt's last block_size
    tokens; bytes of a character split across tokens wait for the rest, as in one decode of all the tokens."""
    tokenizer = get_tokenizer()
    idx = encode_prompt(prompt, next(model.parameters()).device)  # generate_stream reads its last block_size
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = prompt
    tokens = generate_stream(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed, top_p=top_p)
    for token in tokens:
        piece = decoder.decode(tokenizer.decode_single_token_bytes(int(token)))
        if piece:
            text += piece
            yield text
    yield text + decoder.decode(b"", final=True)


def make_handler(model: GPT | None, notice: str) -> Callable[..., Iterator[str]]:
    """The generate button's function: clamps every input, then streams; a failure becomes a message on the page.
    Marked @spaces.GPU where that package is installed: its arguments are plain values, as ZeroGPU passes them to
    the GPU's process, and the model comes with the function."""

    def generate(
        prompt: str | None,
        max_new_tokens: float,
        temperature: float,
        top_k: float,
        seed: float | None,
        top_p: float | None = None,
    ):
        if model is None:
            raise gr.Error(notice)
        prompt = crop_prompt(prompt)
        n = int(clamp(max_new_tokens, 1, MAX_NEW_TOKENS, DEFAULTS["max_new_tokens"]))
        temp = clamp(temperature, 0.0, TEMPERATURE_MAX, DEFAULTS["temperature"])
        k = int(clamp(top_k, 0, TOP_K_MAX, DEFAULTS["top_k"])) or None  # 0: no top-k cut
        seed = int(clamp(seed, 0, MAX_SEED, secrets.randbelow(MAX_SEED + 1)))  # blank: a fresh seed
        p = clamp(top_p, TOP_P_MIN, 1.0, DEFAULTS["top_p"])
        try:
            yield from stream_text(model, prompt, n, temp, k, seed, p)
        except Exception as error:  # keep serving the others: log one line, show the message to this user
            print(f"app.py: generation failed: {type(error).__name__}: {first_line(error)}", file=sys.stderr)
            raise gr.Error(f"Generation failed: {first_line(error)}") from error

    return generate if spaces is None else spaces.GPU(generate)


def memorisation_note(prompt: str | None, text: str | None, trained_on: TrainedOn = TINY_SHAKESPEARE) -> str:
    """Below the answer: how much of what the model wrote is copied verbatim from its training text. A model trained
    until its training loss is tiny recites Shakespeare; this says when it is quoting rather than composing."""
    written = str(text or "")[len(crop_prompt(prompt)) :]
    if not written:
        return ""
    try:
        line = memorisation_line(written, *trained_on)
    except ShakeGPTError as error:
        return f"Memorisation check unavailable: {first_line(error)}"
    return (
        f"**Quoting or composing?** {line}. A long span copied from the training text means the model is reciting "
        "lines it memorised; the validation text, which it never saw, shows what chance overlap looks like."
    )


def build_app(
    model: GPT | None, notice: str, concurrency: int = 4, trained_on: TrainedOn = TINY_SHAKESPEARE
) -> gr.Blocks:
    """The page: prompt and examples, sampling controls, generate and stop buttons, the streamed text and how much
    of it is copied from `trained_on`; queued, so that up to `concurrency` requests generate at once and the rest
    wait their turn."""

    def note(prompt: str | None, text: str | None) -> str:
        return memorisation_note(prompt, text, trained_on)

    with gr.Blocks(title="ShakeGPT", analytics_enabled=False) as demo:
        gr.Markdown("# ShakeGPT\nGPT-2 built from scratch in PyTorch and trained on Shakespeare. Give it a prompt.")
        gr.Markdown(notice if model is not None else f"**No model loaded.** {notice}", elem_id="notice")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(
                    label="Prompt",
                    lines=4,
                    max_length=MAX_PROMPT_CHARS,
                    placeholder="ROMEO:   (left empty, the model starts from <|endoftext|>)",
                    elem_id="prompt",
                )
                gr.Examples(EXAMPLES, inputs=[prompt], cache_examples=False)
            with gr.Column(scale=2):
                max_new = gr.Slider(1, MAX_NEW_TOKENS, DEFAULTS["max_new_tokens"], step=1, label="Max new tokens")
                temperature = gr.Slider(
                    0, TEMPERATURE_MAX, DEFAULTS["temperature"], step=0.05, label="Temperature", info="0: greedy"
                )
                top_k = gr.Slider(
                    0, TOP_K_MAX, DEFAULTS["top_k"], step=1, label="Top-k", info="sample among the k likeliest; 0: all"
                )
                top_p = gr.Slider(
                    TOP_P_MIN, 1.0, DEFAULTS["top_p"], step=0.01, label="Top-p", info="likeliest up to p; 1: all"
                )
                seed = gr.Number(DEFAULTS["seed"], precision=0, label="Seed", info="same seed, same text; blank: new")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop")
        output = gr.Textbox(label="Text", lines=14, max_lines=40, buttons=["copy"], elem_id="output")
        memorisation = gr.Markdown(elem_id="memorisation")
        inputs = [prompt, max_new, temperature, top_k, seed, top_p]  # top_p last: older API calls still work
        # preprocess=False: the handler gets the raw values and clamps them; a slider's own check would refuse an
        # out-of-range value from the API with an error instead.
        event = run.click(make_handler(model, notice), inputs, output, api_name="generate", preprocess=False)
        event.success(note, [prompt, output], memorisation, api_name="memorisation")
        stop.click(None, cancels=[event])
    return demo.queue(default_concurrency_limit=concurrency, max_size=64)


def device_arg(name: str) -> torch.device:
    """--device's value as a torch device; a bad one becomes argparse's one-line error."""
    try:
        return get_device(name)
    except (RuntimeError, ShakeGPTError) as error:
        raise argparse.ArgumentTypeError(first_line(error)) from error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; host and port default to Gradio's variables (a Space sets them), else 127.0.0.1:7860."""
    parser = OneLineParser(prog="app.py", description="Serve a ShakeGPT checkpoint on a Gradio page.")
    parser.add_argument(
        "--ckpt",
        help="checkpoint file, or folder with config.json + model.safetensors (default: $SHAKEGPT_CKPT, the exported "
        "model beside app.py, model.pt, runs/shakespeare/best.pt)",
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="default 127.0.0.1")
    parser.add_argument("--port", type=int, default=os.environ.get("GRADIO_SERVER_PORT", "7860"), help="default 7860")
    parser.add_argument("--device", type=device_arg, default="auto", help="cpu, cuda, mps or auto (default)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests generated at once (default 4)")
    parser.add_argument(
        "--share", action="store_true", help="also serve the page on a public *.gradio.live link (for 72 hours)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port} is not a port number (1-65535)")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def load_or_explain(ckpt: str | None, device: torch.device) -> tuple[GPT | None, str, TrainedOn]:
    """What load_for_app gives for the checkpoint find_checkpoint finds, or None and how to get one."""
    path = find_checkpoint(ckpt)
    if path is None:
        notice = f"No checkpoint found. {HOW_TO_GET_ONE}"
        print(f"app.py: {notice}", file=sys.stderr, flush=True)
        return None, notice, TINY_SHAKESPEARE
    model, notice, trained_on = load_for_app(path, device)
    print(f"app.py: {notice}", flush=True)
    return model, notice, trained_on


def launch_in_notebook(ckpt: str | Path | None = None, share: bool | None = None, device: str = "auto") -> gr.Blocks:
    """Start the demo from a notebook cell and return it (`demo.close()` stops it): Gradio shows the page below the
    cell and the notebook stays usable. On Colab, whose machine your browser cannot reach, Gradio also opens a
    public link (share=None leaves that choice to Gradio; True or False decides)."""
    model, notice, trained_on = load_or_explain(str(ckpt) if ckpt is not None else None, get_device(device))
    demo = build_app(model, notice, trained_on=trained_on)
    demo.launch(share=share, prevent_thread_lock=True)
    return demo


def main(argv: list[str] | None = None) -> int:
    """Load the checkpoint (or explain how to get one), then serve the page until interrupted."""
    args = parse_args(argv)
    try:
        model, notice, trained_on = load_or_explain(args.ckpt, args.device)
        build_app(model, notice, args.concurrency, trained_on).launch(
            server_name=args.host, server_port=args.port, share=args.share
        )
    except (ShakeGPTError, OSError) as error:
        print(f"app.py: error: {first_line(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
