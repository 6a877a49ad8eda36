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
