#!/usr/bin/env bash
# Shared launcher behind run_dataset_generalize_full_training*.sh: loops over checkpoints and seeds.
# Usage (from a run_*.sh): launch_full_finetuning TRAINER_CONFIG GPU DATASET DATA_PATH [extra main.py flags...]
# Environment overrides:
#   CHECKPOINTS  space-separated checkpoint files, each optionally "path:flavour" (default: every
#                *.pth / *.pt / *.tar file in CKPT_DIR)
#   CKPT_DIR     directory scanned when CHECKPOINTS is unset
#   SEEDS        space-separated seeds (default: "21 23 25")
#   EXPERIMENT_ROOT  where run directories and results.csv go (default: experiments/full)
#   TRANSFER_CONFIG  transfer config (default: configs/transfer/full_finetuning.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"

launch_full_finetuning() {
  local trainer=$1 gpu=$2 dset=$3 data=$4
  shift 4
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local python=${PYTHON:-$here/.venv/bin/python}
  local seeds=${SEEDS:-"21 23 25"}
  local root=${EXPERIMENT_ROOT:-experiments/full}
  local transfer=${TRANSFER_CONFIG:-$here/configs/transfer/full_finetuning.yaml}
  local checkpoints
  checkpoints=$(list_checkpoints) || exit 2
  local gpu_flags=(--gpus "$gpu")
  [[ $gpu == cpu ]] && gpu_flags=(--cpu)
  local failed=0 entry ckpt flavour seed
  for entry in $checkpoints; do
    ckpt=${entry%%:*}
    flavour=""
    [[ $entry == *:* ]] && flavour=${entry#*:}
    for seed in $seeds; do
      echo "== $dset | $ckpt | seed $seed"
      "$python" "$here/main.py" --dset "$dset" --dset_path "$data" --config_path "$trainer" \
        --transfer_config_path "$transfer" --from_checkpoint_path "$ckpt" ${flavour:+--checkpoint_flavour "$flavour"} \
        --manual_seed "$seed" --experiment_root_path "$root" \
        --exp_name "${dset}_$(basename "${ckpt%.*}")_seed${seed}" --resume "${gpu_flags[@]}" "$@" \
        || { echo "!! failed: $dset $ckpt seed $seed (continuing)" >&2; failed=$((failed + 1)); }
    done
  done
  echo "done; $failed run(s) failed; results in $root/results.csv"
  [[ $failed -eq 0 ]]
}
