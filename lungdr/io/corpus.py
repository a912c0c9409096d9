"""Corpora: what to read, with labels and patient keys, and patient-disjoint splits.

A labelled corpus is a folder / S3 prefix holding ``images/``, optional ``masks/`` (same ids) and ``labels.csv``
(columns ``id,label`` and optionally ``patient``; other columns are ignored). When ``labels.csv`` has no patient
column, an optional ``provenance.csv`` with ``id,patient`` columns supplies it; otherwise patient = id.
Images without a labels row are kept with label None (nothing is silently dropped).
Anything else is an unlabelled archive: every (non-hidden) file under the URI is an item with label None.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from lungdr.errors import ConfigError, DecodeError, StorageError
from lungdr.io.uri import exists, item_id, join_uri, list_uris, read_bytes


@dataclass(frozen=True)
class CorpusItem:
    id: str
    uri: str
    mask_uri: str | None = None
    label: int | None = None
    patient: str | None = None


def _read_csv(uri: str) -> list[dict]:
    try:
        text = read_bytes(uri).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{uri} is not UTF-8 text") from exc
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "id" not in reader.fieldnames:
        raise DecodeError(f"{uri} needs an 'id' column")
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def _by_id(uris: list[str], root: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for uri in uris:
        key = item_id(uri, root)
        if key in out:
            raise DecodeError(f"two files share the id {key!r} under {root}")
        out[key] = uri
    return out


def _parse_label(value: str, where: str) -> int | None:
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = 0.5
    if not number.is_integer():
        raise DecodeError(f"{where}: label {value!r} is not an integer class")
    return int(number)


def load_corpus(uri: str) -> list[CorpusItem]:
    """Items of a labelled corpus or an unlabelled archive, sorted by id."""
    images = join_uri(uri, "images")
    labels_uri = join_uri(uri, "labels.csv")
    if not exists(images):
        root = str(uri)
        items = [CorpusItem(id=item_id(u, root), uri=u, patient=item_id(u, root)) for u in list_uris(uri)]
        if not items:
            raise StorageError(f"no files under {uri}")
        return sorted(items, key=lambda it: it.id)

    image_by_id = _by_id(list_uris(images), images)
    masks = join_uri(uri, "masks")
    mask_by_id = _by_id(list_uris(masks), masks) if exists(masks) else {}
    rows = _read_csv(labels_uri) if exists(labels_uri) else []
    patients: dict[str, str] = {}
    if not rows or "patient" not in rows[0]:
        provenance = join_uri(uri, "provenance.csv")
        if exists(provenance):
            patients = {r["id"]: r["patient"] for r in _read_csv(provenance) if r.get("patient")}

    labelled: dict[str, CorpusItem] = {}
    missing = []
    for n, row in enumerate(rows, start=2):
        ident = row["id"]
        if ident in labelled:
            raise DecodeError(f"labels.csv line {n}: duplicate id {ident!r}")
        if ident not in image_by_id:
            missing.append(ident)
            continue
        patient = row.get("patient") or patients.get(ident) or ident
        label = _parse_label(row.get("label", ""), f"labels.csv line {n}")
        labelled[ident] = CorpusItem(ident, image_by_id[ident], mask_by_id.get(ident), label, patient)
    if missing:
        raise StorageError(f"{len(missing)} ids in labels.csv have no image under {images} (first: {missing[0]!r})")
    for ident, image_uri in image_by_id.items():
        labelled.setdefault(ident, CorpusItem(ident, image_uri, mask_by_id.get(ident), None, patients.get(ident, ident)))
    return sorted(labelled.values(), key=lambda it: it.id)


def patient_split(items: list[CorpusItem], val_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Split into (train, val) with no patient on both sides, stratified by each patient's majority label.

    Each label stratum sends ``round(val_fraction * n_patients)`` of its patients to val (at least one when the
    stratum has two or more patients and ``val_fraction > 0``). Order inside each side follows ``items``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels_of: dict[str, list] = defaultdict(list)
    for it in items:
        labels_of[it.patient or it.id].append(it.label)
    strata: dict[object, list[str]] = defaultdict(list)
    for patient in sorted(labels_of):
        known = [lab for lab in labels_of[patient] if lab is not None]
        strata[max(set(known), key=known.count) if known else None].append(patient)
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for key in sorted(strata, key=repr):
        patients = strata[key]
        k = int(round(val_fraction * len(patients)))
        if val_fraction > 0 and len(patients) >= 2:
            k = min(max(k, 1), len(patients) - 1)
        val_patients.update(rng.permutation(patients)[:k].tolist())
    train = [it for it in items if (it.patient or it.id) not in val_patients]
    val = [it for it in items if (it.patient or it.id) in val_patients]
    return train, val
