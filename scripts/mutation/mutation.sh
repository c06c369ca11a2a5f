#!/usr/bin/env bash
# Mutation score of the core with mutmut (a maintained tool, installed in a scratch venv: not a
# project dependency). Copies the committed tree to $WORK, mutates the functions listed below
# and runs, for each mutant, the tests that cover its function (pytest -x: the first failure
# kills it). About an hour on 2 cores. Usage:
#     bash scripts/mutation/mutation.sh [WORK [MUTANT ...]]   # default WORK=/tmp/efx-mutation, all of FUNCS
# Named mutants (e.g. the survivors of a first run) rerun only those, against the tests as
# they are now. Score: python scripts/mutation/mutation_report.py WORK/src [WORK2/src ...] (later runs win).
# Then: $WORK/venv/bin/mutmut results (in $WORK/src) lists the survivors; `mutmut show NAME`
# prints one.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${1:-/tmp/efx-mutation}
mkdir -p "$WORK"
[ -x "$WORK/venv/bin/mutmut" ] || { python -m venv --system-site-packages "$WORK/venv" &&
    "$WORK/venv/bin/pip" install -q mutmut==3.8.1 torch==2.13.0 -r "$REPO/requirements.txt"; }
rm -rf "$WORK/src" && mkdir "$WORK/src"
git -C "$REPO" archive HEAD | tar -x -C "$WORK/src"
cd "$WORK/src"
cat > setup.cfg <<'EOF'
[mutmut]
source_paths =
    efx.py
    obs.py
    model.py
    train.py
    eval.py
    support/speedups.py
pytest_add_cli_args_test_selection =
    tests/
pytest_add_cli_args =
    -k
    not cli_bad_input and not cli_runs_on_dir and not ddp_gloo
    --ignore=tests/test_default_model.py
    --ignore=tests/test_compare.py
    --ignore=tests/test_course.py
    --ignore=tests/test_docs.py
also_copy =
    support/
    drivers/
    data.py
    course.py
    course/
EOF
export EFX_CACHE="${EFX_CACHE:-$REPO/.cache/efx}"     # the fetched wheels and the converted model
# Deselected: the tests that start processes in another folder (the CLI table, DDP), where
# mutmut's trampolines cannot find setup.cfg; they check messages and ranks, not the core.
# Error messages and log lines are mutated too: the tests match them.
# The core (issue: mutation score): criteria, masks, PBS (all forms), SparseGPT / OBS, the
# prune driver, LoRA, RoPE, RMSNorm, the schedule and lr, the metrics. Excluded on purpose:
# memory estimates, I/O, the CLIs, logging. Not run per mutant: test_default_model.py (the
# real SmolLM2: conversion and HF parity, slow) and test_compare.py (the study driver).
FUNCS=(
  "efx.x_wanda_score*" "efx.x_magnitude_score*" "efx.x__heads*" "efx.x_consumer_energy*"
  "efx.x_partner_factor*" "efx.x_foresight_score*" "efx.x_average_score*" "efx.x__check_nm*"
  "efx.x_select_mask*" "efx.x_pbs_update*" "efx.x_gram_pbs_update*" "efx.x__maps*"
  "efx.x__run_block*" "efx.x_calibrate_block*" "efx.x__parse_nm*" "efx.x_prune__mutmut_*"
  "efx.x__prune_map*" "efx.x__compensate*" "efx.x__block_inputs*" "efx.x__full_names*"
  "efx.x__check_stats*" "efx.x_merge_error_parts*" "efx.xǁPruneOptionsǁof*"
  "efx.xǁPruneOptionsǁneeds_H*" "efx.xǁPruneOptionsǁlora_scale*"
  "obs.x_chol*" "obs.x_sparsegpt_prune*"
  "model.xǁRMSNormǁforward*" "model.x_rope_inv_freq*" "model.x_apply_rope*"
  "model.xǁLoRALinearǁ__init__*" "model.xǁLoRALinearǁset_lora*"
  "model.xǁLoRALinearǁreset_lora*" "model.xǁLoRALinearǁaugmented_weight*"
  "model.xǁLoRALinearǁforward*" "model.xǁLoRALinearǁmerge*" "model.x_add_lora*" "model.x_merge_lora*" "model.xǁTransformerǁrope*"
  "model.xǁTransformerǁforward*" "support.speedups.xǁGapDropoutǁforward*" "support.speedups.x_completion_ce*"
  "support.speedups.xǁ_CompletionCEǁforward*" "support.speedups.xǁ_CompletionCEǁbackward*"
  "train.x_prune_points*" "train.x_prune_options*" "train.x_ramp*" "train.x_lr_factor*"
  "eval.x_perplexity_record*" "eval.x_macro_f1*" "eval.x__ngrams*" "eval.x__f1*" "eval.x__lcs*"
  "eval.x_rouge*" "eval.x_relative_performance*"
)
[ $# -gt 1 ] && FUNCS=("${@:2}")
time "$WORK/venv/bin/mutmut" run "${FUNCS[@]}" || true
"$WORK/venv/bin/mutmut" results --all true > "$WORK/results.txt" 2>&1 || "$WORK/venv/bin/mutmut" results > "$WORK/results.txt" 2>&1
echo "mutant statuses: $WORK/results.txt"
