#!/usr/bin/env bash
# Shared by the run_*.sh launchers (sourced): which checkpoints to loop over.

# Prints the checkpoint entries ("path" or "path:flavour"): $CHECKPOINTS when set, else every
# *.pth / *.pt / *.tar file in $CKPT_DIR (default: checkpoints). Exits 2 with a one-line error otherwise.
list_checkpoints() {
  if [[ -n ${CHECKPOINTS:-} ]]; then
    echo "$CHECKPOINTS"
    return
  fi
  local dir=${CKPT_DIR:-checkpoints} found
  [[ -d $dir ]] || { echo "error: checkpoint directory $dir not found; set CKPT_DIR=/dir/with/checkpoints or CHECKPOINTS=\"a.pth b.pth:flavour\"" >&2; exit 2; }
  found=$(find "$dir" -maxdepth 1 -type f \( -name '*.pth' -o -name '*.pt' -o -name '*.tar' \) | sort | tr '\n' ' ')
  [[ -n $found ]] || { echo "error: no *.pth/*.pt/*.tar checkpoints in $dir" >&2; exit 2; }
  echo "$found"
}

# The device flags for a launcher's GPU argument: an id such as 0 (or 0,1), or "cpu".
device_flags() {
  if [[ $1 == cpu ]]; then echo "--cpu"; else echo "--gpus $1"; fi
}

# Calls "$1 CHECKPOINT FLAVOUR SEED" for every entry of $2 ("path" or "path:flavour") and every seed
# in $3. A failed run is reported and the loop goes on; prints the count and returns non-zero if any
# run failed. The callback sees the caller's local variables (bash scoping), so it needs no arguments
# beyond these three.
run_grid() {
  local run_one=$1 checkpoints=$2 seeds=$3 results=$4
  local failed=0 entry ckpt flavour seed
  for entry in $checkpoints; do
    ckpt=${entry%%:*}
    flavour=""
    [[ $entry == *:* ]] && flavour=${entry#*:}
    for seed in $seeds; do
      echo "== $ckpt | seed $seed"
      "$run_one" "$ckpt" "$flavour" "$seed" \
        || { echo "!! failed: $ckpt seed $seed (continuing)" >&2; failed=$((failed + 1)); }
    done
  done
  echo "done; $failed run(s) failed; results in $results"
  [[ $failed -eq 0 ]]
}
