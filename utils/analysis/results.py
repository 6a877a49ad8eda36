"""Read result CSVs (the paper's raw_results/*.txt, the project's runs' results.csv) into one tidy table.

Tidy schema, one row per fine-tuning run:
    finetuning  'full' | 'linear'
    arch        display name ('ResNet-50', 'MobileNetV1'; other names kept as written)
    dset        the dataset key exactly as in the file ('SUN', 'birds', ...)
    dataset     its display label ('SUN397', 'Birdsnap', ...); aliases map to one label
    method      the sparsification method label ('Dense', 'AC/DC', ...; the files' `model` column)
    sparsity    fraction in [0, 1], rounded to 4 decimals so float noise cannot split a group
    seed        int ('seed_21' -> 21)
    val_acc     the score: top-1 validation accuracy, fraction in [0, 1]; for detection rows (task = detection)
                COCO mAP@0.5:0.95 (the file's `map` column)
    ...         any extra columns of the file (numeric where every value parses)
    source      the file the row came from; line: its line number there
"""
from __future__ import annotations

import csv
import io
import logging
import math
import re
from pathlib import Path
from typing import Iterable, Literal

import pandas as pd

from utils.errors import UserError
from utils.paths import PAPER_RESULTS_DIR

log = logging.getLogger(__name__)

KEY_COLUMNS = ("finetuning", "arch", "dataset", "method", "sparsity", "seed")
TIDY_COLUMNS = ("finetuning", "arch", "dset", "dataset", "method", "sparsity", "seed", "val_acc")
PROVENANCE_COLUMNS = ("source", "line")
FINETUNING_MODES = ("full", "linear")
DENSE = "Dense"
Duplicates = Literal["first", "last", "all", "error"]

# Display label per dataset, in the order the paper's files list them; keys are normalised aliases.
DATASET_LABELS = {
    "aircraft": "Aircraft", "birds": "Birdsnap", "caltech101": "Caltech-101",
    "caltech256": "Caltech-256", "cars": "Cars", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
    "dtd": "DTD", "food101": "Food-101", "pets": "Pets", "sun": "SUN397", "flowers": "Flowers",
}
_DATASET_ALIASES = {
    "birdsnap": "birds", "sun397": "sun", "fgvcaircraft": "aircraft", "stanfordcars": "cars",
    "oxfordpets": "pets", "oxfordiiitpet": "pets", "oxfordiiitpets": "pets", "food": "food101",
    "flowers102": "flowers", "oxfordflowers": "flowers", "oxfordflowers102": "flowers",
}
_ARCH_LABELS = {"resnet50": "ResNet-50", "mobilenet": "MobileNetV1", "mobilenetv1": "MobileNetV1"}
DATASET_ORDER = tuple(DATASET_LABELS.values())
# The paper's methods and architectures, in the order its tables list them; others follow these.
METHOD_ORDER = ("Dense", "AC/DC", "RigL ERK 1x", "RigL ERK 5x", "LTH-T", "STR", "WoodFisher", "M-FAC")
ARCH_ORDER = ("ResNet-50", "MobileNetV1")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def dataset_label(dset: str) -> str:
    """Display label of a dataset key ('SUN' -> 'SUN397', 'birds' -> 'Birdsnap'); unknown keys unchanged."""
    key = _norm(dset)
    return DATASET_LABELS.get(_DATASET_ALIASES.get(key, key), str(dset))


def arch_label(arch: str) -> str:
    """Display name of an architecture ('resnet50' -> 'ResNet-50'); unknown names unchanged."""
    return _ARCH_LABELS.get(_norm(arch), str(arch))


def sparsity_label(sparsity: float) -> str:
    """'80%' for 0.8, '97.5%' for 0.975."""
    return f"{round(100 * float(sparsity), 2):g}%"


def result_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand directories to the *.csv and *.txt files directly inside them (sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".csv", ".txt") and p.is_file())
            if not found:
                raise UserError(f"{path}: directory holds no *.csv or *.txt result files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: results file not found; check the path")
    return files


def load_results(paths: Iterable[str | Path] | str | Path | None = None, *,
                 duplicates: Duplicates = "first") -> pd.DataFrame:
    """Read result files/directories (default: raw_results/) into one tidy DataFrame."""
    if paths is None:
        paths = [PAPER_RESULTS_DIR]
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    frames = [read_result_file(p) for p in result_files(paths)]
    if not frames:
        raise UserError("no result files given")
    return resolve_duplicates(pd.concat(frames, ignore_index=True), keep=duplicates)


def find_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """All rows sharing (finetuning, arch, dataset, method, sparsity, seed) with another row."""
    check_tidy(df)
    return df[df.duplicated(list(KEY_COLUMNS), keep=False)].sort_values(list(KEY_COLUMNS), kind="stable")


def resolve_duplicates(df: pd.DataFrame, *, keep: Duplicates = "first") -> pd.DataFrame:
    """Keep the first/last row of each duplicate group, keep 'all', or raise ('error'); warns if any."""
    if keep not in ("first", "last", "all", "error"):
        raise UserError(f"duplicates={keep!r}: expected one of first, last, all, error")
    dups = find_duplicates(df)
    if dups.empty:
        return df
    groups = dups.groupby(list(KEY_COLUMNS), sort=False)
    first = next(iter(groups))[1]
    example = (" ".join(f"{k}={v}" for k, v in zip(KEY_COLUMNS, first[list(KEY_COLUMNS)].iloc[0])) + ": "
               + ", ".join(f"{_where(r)} val_acc={r.val_acc}" for r in first.itertuples()))
    message = (f"{len(dups) - groups.ngroups} duplicate result row(s) in {groups.ngroups} group(s) "
               f"with the same {', '.join(KEY_COLUMNS)}; e.g. {example}")
    if keep == "error":
        raise UserError(message + "; remove them or choose duplicates='first'/'last'/'all'")
    action = "kept all of them" if keep == "all" else f"kept the {keep} of each"
    log.warning("%s; %s (see utils.analysis.find_duplicates)", message, action)
    return df if keep == "all" else df[~df.duplicated(list(KEY_COLUMNS), keep=keep)]


def _where(row) -> str:
    return f"{Path(str(row.source)).name}:{row.line}" if hasattr(row, "source") else f"row {row.Index}"


def check_tidy(df: pd.DataFrame) -> None:
    """Raise a UserError if `df` lacks the tidy schema's columns (e.g. a hand-built frame)."""
    missing = [c for c in TIDY_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"results table lacks column(s) {', '.join(missing)}; build it with "
                        "utils.analysis.load_results")


def read_result_file(path: str | Path) -> pd.DataFrame:
    """Parse and validate one result CSV; every problem is a UserError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: results file not found; check the path") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text (CSV) file") from None
    rows = csv.reader(io.StringIO(text))
    header = _read_header(path, next(rows, []))
    records, extras = [], {c: [] for c in header if c not in _PARSED_COLUMNS}
    for row in rows:
        if not any(field.strip() for field in row):
            continue  # blank line
        line = rows.line_num
        values = _split_row(path, line, header, row)
        records.append(_parse_row(path, line, values))
        for col in extras:
            extras[col].append(values[col] if values[col] != "" else None)
    if not records:
        raise UserError(f"{path}: no data rows below the header")
    df = pd.DataFrame.from_records(records, columns=[*TIDY_COLUMNS, "line"])
    for col, vals in extras.items():
        df[col] = _maybe_numeric(pd.Series(vals, dtype=object))
    df["source"] = str(path)
    return df[[*TIDY_COLUMNS, *extras, *PROVENANCE_COLUMNS]]


_PARSED_COLUMNS = {"finetuning", "arch", "dset", "method", "sparsity", "seed", "val_acc"}


def _read_header(path: Path, header: list[str]) -> list[str]:
    header = [h.strip() for h in header]
    while header and header[-1] == "":
        header.pop()  # tolerate a trailing comma (full_transfer_results.txt has one)
    if "" in header:
        raise UserError(f"{path}:1: empty column name at position {header.index('') + 1} of the header")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise UserError(f"{path}:1: column(s) {', '.join(repeated)} appear more than once in the header")
    missing = [c for c in ("dset", "sparsity", "seed", "val_acc") if c not in header]
    if "model" not in header and "method" not in header:
        missing.insert(1, "model (or method)")
    if missing:
        raise UserError(f"{path}:1: missing column(s) {', '.join(missing)}; header is "
                        f"{','.join(header) or '<empty>'}; expected at least dset,model,sparsity,seed,val_acc")
    if "method" not in header:
        header = ["method" if h == "model" else h for h in header]  # `model` holds the method label
    return header


def _split_row(path: Path, line: int, header: list[str], row: list[str]) -> dict[str, str]:
    fields = [f.strip() for f in row]
    while len(fields) > len(header) and fields[-1] == "":
        fields.pop()  # a trailing comma after the last value
    if len(fields) != len(header):
        raise UserError(f"{path}:{line}: ragged row: {len(fields)} field(s) where the header has "
                        f"{len(header)} ({','.join(header)}); fix or delete the row")
    return dict(zip(header, fields))


def _parse_row(path: Path, line: int, values: dict[str, str]) -> tuple:
    where = f"{path}:{line}"
    for col in ("dset", "method"):
        if not values[col]:
            raise UserError(f"{where}: empty {col}; every row needs a dataset and a method label")
    sparsity = _fraction(where, "sparsity", values["sparsity"], hint="write 0.9, not 90")
    if values.get("task") == "detection":     # a detector's score is its mAP@0.5:0.95
        val_acc = _fraction(where, "map", values.get("map", ""), hint="COCO mAP, e.g. 0.412")
    else:
        val_acc = _fraction(where, "val_acc", values["val_acc"], hint="write 0.8362, not 83.62")
    return (_finetuning(where, path, values.get("finetuning", "")),
            arch_label(values.get("arch") or ("MobileNetV1" if "mobilenet" in path.name.lower() else "resnet50")),
            values["dset"], dataset_label(values["dset"]), values["method"], round(sparsity, 4),
            _seed(where, values["seed"]), val_acc, line)


def _finetuning(where: str, path: Path, value: str) -> str:
    if value:
        if value.lower() not in FINETUNING_MODES:
            raise UserError(f"{where}: finetuning {value!r} is not one of {', '.join(FINETUNING_MODES)}")
        return value.lower()
    inferred = [m for m in FINETUNING_MODES if path.name.lower().startswith(m)]
    if not inferred:
        raise UserError(f"{where}: no finetuning value and the file name does not start with "
                        "full_ or linear_; add a finetuning column (full/linear) or rename the file")
    return inferred[0]


def _fraction(where: str, column: str, text: str, *, hint: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise UserError(f"{where}: {column} {text} is outside [0, 1]; it must be a fraction ({hint})")
    return value


def _seed(where: str, text: str) -> int:
    match = re.fullmatch(r"(?:seed_?)?(-?\d+)(?:\.0*)?", text)
    if not match:
        raise UserError(f"{where}: seed {text!r} is neither an integer nor like 'seed_21'")
    return int(match.group(1))


def _maybe_numeric(values: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(values)
    except (ValueError, TypeError):
        return values
