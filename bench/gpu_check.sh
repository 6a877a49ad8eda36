#!/usr/bin/env bash
# The GPU checks the CPU-only suite cannot make, in one run of a few minutes on a machine with NVIDIA GPUs:
#   1. torchrun DDP over NCCL on every GPU: a 70%-sparse checkpoint fine-tuned by main.py (bf16 autocast), its
#      masks exact afterwards (every upstream zero still zero, nothing else zero) and one result row;
#   2. bench/gpu_check.py: ResNet-50 training throughput fp32 / bf16 / fp16 (contiguous and channels-last) with the
#      masks held, and 2:4 semi-structured sparsity (torch.sparse.to_sparse_semi_structured) on a ViT-B/16's
#      Linear layers against dense, with the speedup measured.
#
#   make venv && bench/gpu_check.sh [FOLDER]          # FOLDER default: experiments/gpu_check (made afresh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out=${1:-experiments/gpu_check}
[ -x "$PY" ] || { echo "no $PY: run 'make venv' first" >&2; exit 2; }
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
[ "$gpus" -ge 1 ] || { echo "no CUDA GPU visible to torch: this check is for a GPU machine" >&2; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
rm -rf "$out" && mkdir -p "$out"
start=$(date +%s)

echo "== 1. DDP over NCCL on $gpus GPU(s), masks exact"
"$PY" - "$out" <<'EOF'
import sys
from pathlib import Path

import torch

from models import build_model
from utils.checkpoints import save_native_checkpoint
from utils.sparsity import magnitude_prune_

out = Path(sys.argv[1])
torch.manual_seed(0)
model = build_model("resnet18", num_classes=10)
masks = magnitude_prune_(model, 0.7)
save_native_checkpoint(out / "upstream.pt", model, arch="resnet18", arch_kwargs={}, masks=masks)
(out / "trainer.yaml").write_text("epochs: 2\nbatch_size: 64\noptimizer: {name: sgd, lr: 0.05, momentum: 0.9}\n"
                                  "schedule: {name: step, milestones_epochs: [1]}\n")
EOF
"$PY" -m torch.distributed.run --nproc_per_node "$gpus" main.py --dset synthetic --image_size 64 \
    --config_path "$out/trainer.yaml" --from_checkpoint_path "$out/upstream.pt" --precision bf16 \
    --experiment_root_path "$out/exp" --exp_name ddp --workers 2 --manual_seed 1 --no_progress
"$PY" - "$out" <<'EOF'
import csv
import sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
up = torch.load(out / "upstream.pt", weights_only=True)["state_dict"]
got = torch.load(out / "exp" / "ddp" / "model.pt", weights_only=True)["state_dict"]
layers = [k for k, v in up.items() if v.dim() > 1 and not k.startswith("fc.") and (v == 0).any()]
exact = all(torch.equal(got[k] == 0, up[k] == 0) for k in layers)
rows = list(csv.DictReader(open(out / "exp" / "results.csv")))
print(f"DDP: {len(layers)} sparse layers, every upstream zero still zero and nothing else zero: {exact}; "
      f"result rows: {len(rows)} (accuracy {rows[0]['val_acc'] if rows else '-'})")
sys.exit(0 if exact and len(rows) == 1 else 1)
EOF

echo "== 2. precision throughput and 2:4 semi-structured sparsity"
"$PY" bench/gpu_check.py --steps 20 --batch 64 --size 224
echo "gpu_check: $(( $(date +%s) - start )) s"
