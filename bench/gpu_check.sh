#!/usr/bin/env bash
# The GPU check of issue #10 (item 4), as one command for the device tool (run it from the repo root):
#     run(command="bash bench/gpu_check.sh", timeout_s=600)
# Builds an 8B-shaped random base (bf16, straight on the GPU, saved as safetensors shards) and 100 random r=8
# adapters under /tmp (~24 GB of disk), then times engine vs the naive loop (naive timed on 3 models, extrapolated)
# and holds the bf16 vectors to the fp32 ones (cosine >= 0.999; exit 1 on FAIL). Figures: $OUT/bench_gpu.json,
# the whole log: $OUT/bench_gpu.log. No venv: the device's python3 already has torch, transformers, peft,
# safetensors, tokenizers, numpy, pandas and pyarrow (/work/.library/device/KINDS.md); nothing is downloaded.
# Smaller first try: PRESET=llama-8b-shape-mid bash bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-bench/out}
PRESET=${PRESET:-llama-8b-shape}
NAIVE=${NAIVE:-3}
LIMIT=${LIMIT:-540}                       # stop before the tool's 600 s, so the log and the partial JSON come back
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, transformers, peft; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
  df -h /tmp | tail -1
  timeout "$LIMIT" python3 bench/bench_engine.py --preset "$PRESET" --random-weights --device cuda \
      --naive-models "$NAIVE" --json "$OUT/bench_gpu.json"
  rc=$?
  echo "bench_engine.py exit code: $rc (124: cut at ${LIMIT} s; 1: bf16 check FAILED)"
  exit $rc
} 2>&1 | tee "$OUT/bench_gpu.log"
