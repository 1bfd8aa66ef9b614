#!/usr/bin/env bash
# The GPU path in one call (a CUDA machine, torch 2.11, the project installed in .venv):
#
#   bench/gpu.sh [OUT_DIR]          # default: exp/gpu_bench; environment: PY, NGPU, STEPS, NJ
#
# 1. bench/gpu_model.py: the 360M preset in bf16 with SDPA restricted to the flash kernel: the
#    device's bf16 matmul peak, training tokens/s and MFU (delay, multiscale), decoding frames/s
#    for 1 and 32 rows  -> OUT_DIR/gpu_model.{txt,json}
# 2. the mini recipe (egs/mini_espeak/speechlm1): data, tokens and vocabulary (stages 1-6, on the
#    CPU cores), then STEPS (default 300) training steps on NGPU (default 1) GPU(s): bf16,
#    activation checkpointing -> exp/gpu_bench_<NGPU>gpu in the recipe dir; the median tokens/s of
#    its train_log.jsonl is printed at the end.
# Note: the recipe launches torchrun (NCCL) only for NGPU > 1, and the trainer wraps the model in
# DDP only when there is more than one rank (one rank trains the bare module, the same result):
# NGPU=2 exercises NCCL DDP on a two-GPU machine.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "${root}"
PY=${PY:-${root}/.venv/bin/python}
NGPU=${NGPU:-1}
STEPS=${STEPS:-300}
NJ=${NJ:-$(nproc)}
out=${1:-exp/gpu_bench}
mkdir -p "${out}"
out=$(cd "${out}" && pwd)

if ! "${PY}" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench/gpu.sh: torch sees no CUDA device (PY=${PY}); this script is for a GPU machine" >&2
    exit 1
fi
"${PY}" -c 'import torch; print("torch", torch.__version__, "on", torch.cuda.get_device_name(0), "x", torch.cuda.device_count())' \
    | tee "${out}/device.txt"

echo "== 1/2 model and decoding benchmark (360m, bf16, flash SDPA)"
"${PY}" bench/gpu_model.py --device cuda --model 360m --json "${out}/gpu_model.json" | tee "${out}/gpu_model.txt"

echo "== 2/2 mini recipe: data (stages 1-6) then ${STEPS} training steps on ${NGPU} GPU(s)"
cd egs/mini_espeak/speechlm1
tag=gpu_bench_${NGPU}gpu
./run.sh --stage 1 --stop_stage 6 --nj "${NJ}"
start=$(date +%s)
./run.sh --stage 8 --stop_stage 8 --ngpu "${NGPU}" --tag "${tag}" \
    --train_args "--device cuda --precision bf16 --max-steps ${STEPS} --set activation_checkpointing=true --set valid_every=${STEPS} --set save_every=${STEPS} --set log_every=50"
took=$(( $(date +%s) - start ))
log=exp/${tag}/logs/train.log
echo "training: ${STEPS} steps in ${took} s (process start and validation included); log: ${PWD}/${log}" \
    | tee "${out}/train.txt"
grep -E "on [0-9]+ process|training done" "${log}" | tail -n 4 | tee -a "${out}/train.txt" || true
"${PY}" - "exp/${tag}/train_log.jsonl" <<'PYEOF' | tee -a "${out}/train.txt"
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rates = [r["tokens_per_s"] for r in rows if r.get("split") == "train" and "tokens_per_s" in r][1:]  # skip warm-up
print(f"median training tokens/s over {len(rates)} log intervals: {statistics.median(rates):,.0f}" if rates
      else "no tokens_per_s in the training log")
PYEOF
echo "results in ${out}"
