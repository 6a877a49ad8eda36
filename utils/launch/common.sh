#!/usr/bin/env bash
# Shared by the run_*.sh launchers (sourced): which checkpoints to loop over.

# Prints the checkpoint entries, one per line ("path" or "path:flavour"), from the first of:
#   CHECKPOINTS_FILE  a file with one entry per line (paths may hold spaces; blank and # lines ignored)
#   CHECKPOINTS       space-separated entries
#   CKPT_DIR          every *.pth / *.pt / *.tar file in it and its subfolders, symlinks followed (default:
#                     checkpoints); a run directory's checkpoint.pt (training state) beside its model.pt is
#                     skipped, with a note saying how many
# Exits 2 with a one-line error when there are none, a listed file is missing, or two entries would name the same
# runs (checkpoint_label: the file's stem, or its folder's name for model.pt and the like).
list_checkpoints() {
  local entries
  if [[ -n ${CHECKPOINTS_FILE:-} ]]; then
    [[ -f $CHECKPOINTS_FILE ]] || { echo "error: CHECKPOINTS_FILE $CHECKPOINTS_FILE not found; give a file with one checkpoint path per line" >&2; exit 2; }
    entries=$(sed -e 's/\r$//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$CHECKPOINTS_FILE" | grep -v -e '^$' -e '^#' || true)
    [[ -n $entries ]] || { echo "error: CHECKPOINTS_FILE $CHECKPOINTS_FILE lists no checkpoints (one path per line)" >&2; exit 2; }
  elif [[ -n ${CHECKPOINTS:-} ]]; then
    entries=$(tr -s ' \t' '\n\n' <<< "$CHECKPOINTS" | grep -v '^$')
  else
    local dir=${CKPT_DIR:-checkpoints} broken
    [[ -d $dir ]] || { echo "error: checkpoint directory $dir not found; set CKPT_DIR=/dir/with/checkpoints, CHECKPOINTS=\"a.pth b.pth:flavour\" or CHECKPOINTS_FILE=list.txt" >&2; exit 2; }
    broken=$(find "$dir" -xtype l \( -name '*.pth' -o -name '*.pt' -o -name '*.tar' \) | sort)
    [[ -z $broken ]] || { echo "error: broken link(s) in $dir: $(tr '\n' ' ' <<< "$broken")-- fix or remove them" >&2; exit 2; }
    local found state
    found=$(find -L "$dir" -type f \( -name '*.pth' -o -name '*.pt' -o -name '*.tar' \) | sort)
    state=$(grep '/checkpoint\.pt$' <<< "$found" | while IFS= read -r f; do [[ -f ${f%/*}/model.pt ]] && echo "$f"; done)
    entries=$(grep -v -x -F -f <(printf '%s\n' "$state") <<< "$found" || true)
    [[ -z $state ]] || echo "note: skipped $(wc -l <<< "$state") training-state file(s) (checkpoint.pt beside a model.pt) in $dir" >&2
    [[ -n $entries ]] || { echo "error: no *.pth/*.pt/*.tar checkpoints in $dir or its subfolders" >&2; exit 2; }
  fi
  local clash
  clash=$(while IFS= read -r entry; do checkpoint_label "$(checkpoint_path "$entry")"; done <<< "$entries" | sort | uniq -d | head -1)
  [[ -z $clash ]] || { echo "error: two checkpoints would name their runs $clash (a file's stem, or its folder for model.pt and the like); rename or link one of them" >&2; exit 2; }
  echo "$entries"
}

# A checkpoint's name in run names, as main.py gives it (utils/runs/plan.py checkpoint_label): the file's stem, or
# its folder's name for a generic file name such as a run directory's model.pt.
checkpoint_label() {
  local path=$1 file stem
  [[ $path == /* ]] || path="$PWD/$path"
  file=$(basename "$path")
  stem=${file%.*}
  case $stem in
    model|checkpoint|last|best|model_best|weights|pytorch_model|final) basename "$(dirname "$path")" ;;
    *) echo "$stem" ;;
  esac
}

# "path:flavour" -> path; an entry whose last ':' part holds a '/' is a path with a colon in it.
checkpoint_path() {
  if [[ $1 == *:* && ${1##*:} != */* ]]; then echo "${1%:*}"; else echo "$1"; fi
}

checkpoint_flavour() {
  if [[ $1 == *:* && ${1##*:} != */* ]]; then echo "${1##*:}"; fi
}

# The device flags for a launcher's GPU argument: an id such as 0 (or 0,1), or "cpu".
device_flags() {
  if [[ $1 == cpu ]]; then echo "--cpu"; else echo "--gpus $1"; fi
}

# Calls "$1 CHECKPOINT FLAVOUR SEED" for every entry (one per line) of $2 and every seed in $3. A
# failed run is reported and the loop goes on; prints the count and returns non-zero if any run
# failed. The callback sees the caller's local variables (bash scoping), so it needs no arguments
# beyond these three.
run_grid() {
  local run_one=$1 checkpoints=$2 seeds=$3 results=$4
  local failed=0 entry ckpt flavour seed
  while IFS= read -r entry <&3; do
    ckpt=$(checkpoint_path "$entry")
    flavour=$(checkpoint_flavour "$entry")
    for seed in $seeds; do
      echo "== $ckpt | seed $seed"
      if [[ ! -f "$ckpt" ]]; then   # said at once, without starting Python (seconds a run) to say it
        echo "error: checkpoint not found: $ckpt (check CHECKPOINTS / CHECKPOINTS_FILE / CKPT_DIR)" >&2
        echo "!! failed: $ckpt seed $seed (continuing)" >&2; failed=$((failed + 1)); continue
      fi
      "$run_one" "$ckpt" "$flavour" "$seed" \
        || { echo "!! failed: $ckpt seed $seed (continuing)" >&2; failed=$((failed + 1)); }
    done
  done 3<<< "$checkpoints"
  echo "done; $failed run(s) failed; results in $results"
  [[ $failed -eq 0 ]]
}
