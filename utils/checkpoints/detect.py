"""Which flavour a checkpoint file is: the registered flavours' `detect` rules, matched against its content."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

from utils.checkpoints.flavours import FLAVOURS, RAW_FLAVOURS, DetectRule, Flavour
from utils.checkpoints.state import extract_state_dict, split_key
from utils.errors import UserError

log = logging.getLogger(__name__)


def _field(raw: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(raw, Mapping) or part not in raw:
            return _MISSING
        raw = raw[part]
    return raw


_MISSING = object()


def rule_matches(rule: DetectRule, flavour: Flavour, raw: Any) -> bool:
    if not isinstance(raw, Mapping):
        return False
    if any(k not in raw for k in rule.top_level_keys) or any(k in raw for k in rule.absent_top_level_keys):
        return False
    for dotted, pattern in rule.fields.items():
        value = _field(raw, dotted)
        if value is _MISSING or not re.fullmatch(pattern, str(value)):
            return False
    if not (rule.required_keys or rule.forbidden_keys or rule.key_ndim or rule.key_shape):
        return True
    try:
        sd, _ = extract_state_dict(raw, flavour)
    except UserError:
        return False
    tensors = {}
    for key, value in sd.items():
        kind, name = split_key(key, flavour)
        if kind == "tensor":
            tensors[name] = value
    names = list(tensors)
    if not all(any(re.search(p, n) for n in names) for p in rule.required_keys):
        return False
    if any(re.search(p, n) for p in rule.forbidden_keys for n in names):
        return False
    for pattern, ndim in rule.key_ndim.items():
        hits = [tensors[n].dim() for n in names if re.search(pattern, n)]
        if not hits or any(d != ndim for d in hits):
            return False
    for pattern, shape in rule.key_shape.items():
        hits = [list(tensors[n].shape) for n in names if re.search(pattern, n)]
        if not hits or any(h != list(shape) for h in hits):
            return False
    return True


def flavour_matches(flavour: Flavour, raw: Any) -> bool:
    return any(rule_matches(rule, flavour, raw) for rule in flavour.detect)


# what policies.manager.Manager.training_state writes to a run's checkpoint.pt
TRAINING_STATE_KEYS = {"epochs_completed", "step", "model", "optimizer", "policies"}


def detect_flavour(raw: Mapping, *, source: str = "") -> Flavour:
    """The unique registered flavour whose detect rules match `raw`; otherwise a UserError."""
    names = FLAVOURS.names()
    hits = [n for n in names if flavour_matches(FLAVOURS.get(n), raw)]
    where = f"{source}: " if source else ""
    if len(hits) == 1:
        derived = [n for n in names if RAW_FLAVOURS.get(n, {}).get("extends") == hits[0]]
        same = f" (same layout as {', '.join(derived)}: pass --checkpoint_flavour to label the method)"
        log.info("detected checkpoint flavour %r%s", hits[0], same if derived else "")
        return FLAVOURS.get(hits[0])
    if hits:
        raise UserError(f"{where}the checkpoint matches several flavours ({', '.join(hits)}); "
                        f"pass --checkpoint_flavour with one of them")
    if isinstance(raw, Mapping) and TRAINING_STATE_KEYS <= set(raw):
        model = Path(source).parent / "model.pt" if source else "RUN/model.pt"
        raise UserError(f"{where}this is a run's training state (model, optimizer, policies, for --resume), not a "
                        f"model; use the run's finished model {model} (written when the run ends)")
    top = sorted(map(str, raw))[:8] if isinstance(raw, Mapping) else type(raw).__name__
    raise UserError(f"{where}could not recognise the checkpoint format (top-level keys: {top}); pass "
                    f"--checkpoint_flavour NAME (one of: {', '.join(names)}) or a flavour YAML path; a plain state "
                    "dict of a timm or torchvision model: pass --arch timm:NAME or tv:NAME")
