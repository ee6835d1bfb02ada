"""Conversion to and from Hugging Face transformers, taught in notebook 04: OpenAI's GPT-2 weights into our GPT, and
our trained model out as a folder that transformers loads like OpenAI's GPT-2 (what a Space serves and the Hub
hosts: weights, configs, tokenizer, model card), and back in."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from .basics import ShakeGPTError, first_line
from .card import model_readme
from .checkpoint import clean_state_dict, load_checkpoint, model_from_checkpoint
from .model import GPT, GPTConfig
from .tokenizer import END_OF_TEXT, END_OF_TEXT_ID, gpt2_bpe_folder, verified_bpe_files

# The two files of an exported model: transformers' GPT-2 config and the weights (safetensors: no pickle to trust).
EXPORTED_FILES = ("config.json", "model.safetensors")
# GPT-2's byte-pair files under the names transformers reads, copied from the verified files tiktoken is built from.
TOKENIZER_FILES = {"vocab.json": "encoder.json", "merges.txt": "vocab.bpe"}

HUB_HOST = "huggingface.co"

# transformers' GPT-2 stores these weights as Conv1D, (in, out): the transpose of nn.Linear's (out, in).
HF_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt2_config_values(config: GPTConfig, vocab_size: int) -> dict:
    """Our config as the arguments of transformers' GPT2Config (also what its config.json holds): the one mapping."""
    return {
        "vocab_size": vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 x n_embd, as ours
        "activation_function": "gelu_new",  # the tanh GELU
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "bos_token_id": END_OF_TEXT_ID,
        "eos_token_id": END_OF_TEXT_ID,
        "tie_word_embeddings": True,
    }


def check_tanh_gelu(activation_function: str) -> None:
    """Refuse a transformers model whose MLP is not GPT-2's tanh GELU: our MLP computes that one only."""
    if activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ShakeGPTError(f"GPT-2 uses tanh GELU; this model uses {activation_function!r}.")


def from_hf(source, n_head: int | None = None, **overrides) -> GPT:
    """Our GPT from a transformers GPT2LMHeadModel, or from a bare GPT-2 state dict with `n_head` given (weights do
    not say how many heads they are split into). Conv1D weights are stored transposed."""
    if isinstance(source, Mapping):
        state = dict(source)
        if n_head is None:
            raise ShakeGPTError("a bare GPT-2 state dict does not say its number of heads: pass n_head=.")
        config_values = {}
    else:
        hf_config = source.config
        check_tanh_gelu(hf_config.activation_function)
        state = source.state_dict()
        n_head = n_head or hf_config.n_head
        config_values = {"dropout": hf_config.resid_pdrop}
    state = {(k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"): v for k, v in state.items()}
    wte, wpe = state["transformer.wte.weight"], state["transformer.wpe.weight"]
    n_layer = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.h."))
    shape = dict(block_size=wpe.size(0), vocab_size=wte.size(0), n_layer=n_layer, n_head=n_head, n_embd=wte.size(1))
    model = GPT(GPTConfig(**{**shape, **config_values, **overrides}))
    converted = {}
    for name in model.state_dict():
        if name == "lm_head.weight":
            continue  # tied to wte
        tensor = state[name]
        converted[name] = tensor.t() if name.endswith(HF_CONV1D_WEIGHTS) else tensor
    converted["lm_head.weight"] = converted["transformer.wte.weight"]
    model.load_state_dict(converted)
    return model


def reach_hub() -> None:
    """Open a connection to the Hugging Face Hub and close it: offline, an OSError at once rather than after a
    library's retries."""
    socket.create_connection((HUB_HOST, 443), timeout=5).close()


def from_pretrained(name: str = "gpt2", **overrides) -> GPT:
    """OpenAI's released GPT-2 weights via transformers: from the local cache, else downloaded from the Hugging Face
    Hub once. Offline, it says so at once instead of waiting out transformers' retries."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError as error:
        raise ShakeGPTError("from_pretrained needs transformers: pip install transformers.") from error
    try:
        return from_hf(GPT2LMHeadModel.from_pretrained(name, local_files_only=True), **overrides)
    except OSError:
        pass  # not cached yet
    try:
        reach_hub()
        hf = GPT2LMHeadModel.from_pretrained(name)
    except OSError as error:
        raise ShakeGPTError(
            f"could not load pretrained {name!r} from the Hugging Face Hub (offline, or no such model): "
            f"{first_line(error)}"
        ) from error
    return from_hf(hf, **overrides)


@contextlib.contextmanager
def new_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` to fill, renamed to `out` (which must be new or empty) once the block ends
    without an error and removed if it fails: a folder to upload whole is never left half-written."""
    check_out(out)
    resolved = out.resolve()  # `.` has no name of its own
    partial = resolved.with_name(f".{resolved.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        partial.mkdir(parents=True)
        yield partial
        if out.is_dir():
            out.rmdir()  # empty (check_out said so): the finished folder takes its place
        partial.rename(out)
    except OSError as error:
        raise ShakeGPTError(f"could not write {out}: {first_line(error)}") from error
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already after the rename


def check_out(out: Path) -> None:
    """Refuse an output folder that holds anything: it is uploaded whole, so stray files must not mix in."""
    if out.exists() and not out.is_dir():
        raise ShakeGPTError(f"{out} exists and is not a folder: choose a new or empty folder.")
    if out.is_dir() and any(out.iterdir()):
        raise ShakeGPTError(f"{out} exists and is not empty: choose a new or empty folder.")


def write_json(path: Path, values: dict) -> None:
    """`values` as indented JSON, the way transformers writes its own configs."""
    path.write_text(json.dumps(values, indent=2) + "\n")


def write_weights(model: GPT, folder: Path) -> None:
    """`folder/config.json` and `folder/model.safetensors`, which GPT2LMHeadModel.from_pretrained loads with the same
    logits. A padded vocabulary is cut back to the 50,257 real tokens."""
    from safetensors.torch import save_file

    n_tokens = model.n_valid_tokens
    tensors = {}
    for name, tensor in clean_state_dict(model.state_dict()).items():
        if name == "lm_head.weight":
            continue  # transformers ties it to wte again on load
        tensor = tensor.detach().float().cpu()
        if name.endswith(HF_CONV1D_WEIGHTS):
            tensor = tensor.t()
        if name == "transformer.wte.weight":
            tensor = tensor[:n_tokens]
        tensors[name] = tensor.contiguous()
    config_file, weights_file = (folder / name for name in EXPORTED_FILES)
    save_file(tensors, str(weights_file), metadata={"format": "pt"})
    hf_config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_ctx": model.config.block_size}
    write_json(config_file, hf_config | gpt2_config_values(model.config, n_tokens) | {"torch_dtype": "float32"})


def write_tokenizer(folder: Path, block_size: int) -> None:
    """GPT-2's tokenizer as AutoTokenizer reads it: the two byte-pair files, and a config that names the tokenizer,
    its one special token and the longest input the model reads. It encodes exactly as get_tokenizer() does."""
    bpe_files = verified_bpe_files(gpt2_bpe_folder())
    for name, source in TOKENIZER_FILES.items():
        shutil.copyfile(bpe_files[source], folder / name)
    special = {"content": END_OF_TEXT, "special": True, "normalized": False}
    special |= dict.fromkeys(("lstrip", "rstrip", "single_word"), False)  # matched wherever it is, spaces kept
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": block_size,
        "bos_token": END_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "unk_token": END_OF_TEXT,
        "add_prefix_space": False,  # "Hello" and " Hello" stay different tokens
        "clean_up_tokenization_spaces": False,  # decoding gives the text back as it was, a space before "," too
        "added_tokens_decoder": {str(END_OF_TEXT_ID): special},
    }
    write_json(folder / "tokenizer_config.json", config)


def write_transformers_files(model: GPT, folder: Path) -> None:
    """Everything transformers needs to load and run `model` from `folder`: weights and config, the tokenizer, and
    generation_config.json, whose end-of-text id stops generation and pads batches."""
    write_weights(model, folder)
    write_tokenizer(folder, model.config.block_size)
    ids = ("bos_token_id", "eos_token_id", "pad_token_id")
    write_json(folder / "generation_config.json", dict.fromkeys(ids, END_OF_TEXT_ID))


def export_hf(model: GPT, folder: str | Path, checkpoint: dict | None = None, source: str = "") -> Path:
    """Write `model` into `folder` (new or empty; written whole or not at all) as transformers' GPT-2, which
    AutoTokenizer, GPT2LMHeadModel and pipeline("text-generation") load offline: the weights and configs, GPT-2's
    tokenizer, and README.md, a model card with the Hub's metadata. `checkpoint` (what load_checkpoint returns) and
    `source`, its file's name, fill in the run's facts; without them the card says they are not recorded."""
    folder = Path(folder)
    with new_folder(folder) as partial:
        write_transformers_files(model, partial)
        (partial / "README.md").write_text(model_readme(checkpoint, model, source), encoding="utf-8")
    return folder


def checkpoint_to_export(ckpt: str | Path, out: str | Path) -> tuple[dict, GPT]:
    """The checkpoint file `ckpt` and its model on the CPU, to be written into `out`; a folder `out` that holds
    anything is refused first, before the checkpoint is read."""
    check_out(Path(out))
    checkpoint = load_checkpoint(ckpt)
    return checkpoint, model_from_checkpoint(checkpoint, "cpu", source=ckpt)


def export_checkpoint(ckpt: str | Path, folder: str | Path) -> Path:
    """export_hf for the checkpoint file `ckpt`, its run's facts on the model card."""
    checkpoint, model = checkpoint_to_export(ckpt, folder)
    return export_hf(model, folder, checkpoint, Path(ckpt).name)


def load_exported(folder: str | Path, device: str | torch.device = "cpu") -> GPT:
    """Our GPT, on `device` and in eval mode, from a folder `export_hf` wrote (config.json + model.safetensors):
    the format a Space serves, read without unpickling anything. ShakeGPTError, naming the folder, when the files
    are missing, unreadable, not GPT-2, or disagree with each other."""
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [name for name in EXPORTED_FILES if not (folder / name).is_file()]
    if missing:
        raise ShakeGPTError(
            f"no exported model at {folder}: it needs {' and '.join(EXPORTED_FILES)} (missing: {', '.join(missing)}); "
            "write one with export_hf or `python -m shakegpt_utils space`."
        )
    try:
        config = json.loads((folder / "config.json").read_text())
        check_tanh_gelu(config.get("activation_function", "gelu_new"))
        model = from_hf(load_file(folder / "model.safetensors"), n_head=config["n_head"])
        check_exported_shape(model.config, config)
    except Exception as error:  # a broken folder fails in many ways: JSON, safetensors, missing or misshapen weights
        raise ShakeGPTError(f"{folder} does not hold a usable exported model: {first_line(error)}") from error
    return model.to(device).eval()


def check_exported_shape(ours: GPTConfig, config: dict) -> None:
    """Refuse a config.json whose shape differs from the weights beside it: one of the two files is not the other's."""
    expected = gpt2_config_values(ours, ours.vocab_size)
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer"):
        if key in config and config[key] != expected[key]:
            raise ShakeGPTError(f"config.json says {key}={config[key]} but the weights have {expected[key]}.")
