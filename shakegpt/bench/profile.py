"""Where a training step's time goes (`python -m shakegpt_utils bench profile`): torch.profiler over a few steps of
the model as `train` trains it on this device, the time of every operation sorted into matrix products, attention,
the loss, the optimizer and the rest. On a GPU the time is the kernels' and the share the GPU sat idle is reported
too: a step whose GPU waits is launch-bound, one whose matrix products dominate is compute-bound."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import matplotlib.pyplot as plt
from torch.profiler import ProfilerActivity, profile

from ..hardware import describe_device, set_seed, synchronize
from .settings import BenchSettings, device_label, resolve_for_device, result_header
from .timing import step_as_trained, timed_call

# Operation or kernel names by what they compute, tried in this order (log_softmax is the loss, softmax attention).
KINDS = {
    "loss": ("cross_entropy", "crossentropy", "log_softmax", "nll_loss"),
    "attention": ("attention", "flash", "fmha", "softmax"),
    "matrix products": ("gemm", "mm", "matmul", "linear", "cutlass", "xmma", "cublas"),
}
OPTIMIZER_STEP = "Optimizer."  # torch.optim labels each step and zero_grad "Optimizer.step#AdamW.step" and so on


def kind_of(name: str) -> str:
    """What an operation or kernel called `name` computes, as one of KINDS, or "the rest"."""
    lowered = name.lower()
    return next((kind for kind, parts in KINDS.items() if any(part in lowered for part in parts)), "the rest")


def event_kind(event) -> str:
    """What a profiled operation computes: "optimizer" inside an optimizer's step or zero_grad; else its own kind
    (by its name and its kernels'), or, for a copy or a sum, the kind of the nearest operation around it that has
    one (the casts of a linear layer, the sums of its backward)."""
    chain = []
    while event is not None:
        chain.append(event)
        event = event.cpu_parent
    if any(e.name.startswith(OPTIMIZER_STEP) for e in chain):
        return "optimizer"
    for e in chain:
        kind = kind_of(" ".join([e.name, *(kernel.name for kernel in getattr(e, "kernels", []))]))
        if kind != "the rest":
            return kind
    return "the rest"


def time_by_kind(events, on_gpu: bool) -> Counter:
    """Microseconds by kind: each operation's own time (its kernels' on a GPU)."""
    seconds: Counter = Counter()
    for event in events:
        own = event.self_device_time_total if on_gpu else event.self_cpu_time_total
        if own > 0:
            seconds[event_kind(event)] += own
    return seconds


def bench_profile(settings: BenchSettings | None = None, log: Callable[[str], None] = print) -> tuple[dict, plt.Figure]:
    """Profile `steps` training steps after `warmup` ones (set up as training sets them up here: the micro-batch
    fitted to the memory, TF32, compiled where that works) and return the shares of time by kind, with the figure."""
    s, device = resolve_for_device(settings)
    log(describe_device(device))
    set_seed(s.seed)
    timed = step_as_trained(s, device)
    for _ in range(s.warmup):
        timed.step()
    synchronize(device)
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as profiler:
        wall_s, _ = timed_call(lambda: [timed.step() for _ in range(s.steps)], device)  # with the profiler's overhead
    wall_us = 1e6 * wall_s
    seconds = time_by_kind(profiler.events(), on_gpu)
    busy_us = sum(seconds.values())
    shares = {kind: seconds[kind] / busy_us for kind in (*KINDS, "optimizer", "the rest")}
    result = result_header("profile", device, {**timed.cfg.to_dict(), "compiled": timed.compiled})
    result.update(shares=shares, ms_per_step=wall_us / 1000 / s.steps, busy_ms_per_step=busy_us / 1000 / s.steps)
    if on_gpu:
        result["gpu_idle_share"] = max(0.0, 1 - busy_us / wall_us)
    for kind, share in shares.items():
        log(f"{kind:<16} {100 * share:5.1f}%  {share * busy_us / 1000 / s.steps:8.2f} ms per step")
    if on_gpu:
        log(f"GPU idle {100 * result['gpu_idle_share']:.1f}% of {result['ms_per_step']:.2f} ms per step")
    return result, plot_profile(result)


def plot_profile(result: dict) -> plt.Figure:
    """The shares of a step's time by kind, as horizontal bars."""
    shares = result["shares"]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.barh(list(shares), [100 * share for share in shares.values()], color="tab:blue")
    for y, share in enumerate(shares.values()):
        ax.text(100 * share + 0.5, y, f"{100 * share:.1f}%", va="center", fontsize=8)
    ax.invert_yaxis()
    where = "kernel time on the GPU" if "gpu_idle_share" in result else "operator time on the CPU"
    ax.set_xlabel(f"share of a training step's {where} (%)")
    ax.set_title(
        f"where a step's time goes — {result['settings']['preset']} preset\n{device_label(result)}", fontsize=9
    )
    fig.tight_layout()
    return fig
