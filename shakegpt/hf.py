"""Conversion to and from Hugging Face transformers, taught in notebook 04: OpenAI's GPT-2 weights into our GPT, and
our trained model out in the format GPT2LMHeadModel.from_pretrained reads (what a Space serves), and back in."""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from pathlib import Path

import torch

from .checkpoint import clean_state_dict
from .config import GPTConfig, ShakeGPTError, first_line
from .model import GPT

# The two files of an exported model: transformers' GPT-2 config and the weights (safetensors: no pickle to trust).
EXPORTED_FILES = ("config.json", "model.safetensors")

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
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": True,
    }


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
        if hf_config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ShakeGPTError(f"GPT-2 uses tanh GELU; this model uses {hf_config.activation_function!r}.")
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
        socket.create_connection((HUB_HOST, 443), timeout=5).close()
        hf = GPT2LMHeadModel.from_pretrained(name)
    except OSError as error:
        raise ShakeGPTError(
            f"could not load pretrained {name!r} from the Hugging Face Hub (offline, or no such model): "
            f"{first_line(error)}"
        ) from error
    return from_hf(hf, **overrides)


def export_hf(model: GPT, folder: str | Path) -> Path:
    """Write `folder/config.json` and `folder/model.safetensors` that transformers' GPT2LMHeadModel.from_pretrained
    loads offline with the same logits. A padded vocabulary is cut back to the 50,257 real tokens."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
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
    hf_config |= gpt2_config_values(model.config, n_tokens) | {"torch_dtype": "float32"}
    config_file.write_text(json.dumps(hf_config, indent=2) + "\n")
    return folder


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
        if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ShakeGPTError(f"GPT-2 uses tanh GELU; this model uses {config['activation_function']!r}.")
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
