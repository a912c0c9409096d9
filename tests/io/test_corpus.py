"""Corpus layouts (labelled / unlabelled, local / S3) and patient-disjoint, stratified splits."""

from __future__ import annotations

from collections import Counter

import pytest

from lungdr.errors import ConfigError, DecodeError, StorageError
from lungdr.io import CorpusItem, load_corpus, patient_split, write_bytes


def make_labelled(root, rows: str, images=("a", "b", "c"), masks=("a",), ext=".png"):
    for name in images:
        write_bytes(f"{root}/images/{name}{ext}", b"img")
    for name in masks:
        write_bytes(f"{root}/masks/{name}.png", b"mask")
    write_bytes(f"{root}/labels.csv", rows.encode())
    return str(root)


def test_labelled_corpus(tmp_path):
    root = make_labelled(tmp_path, "id,label,patient,notes\na,0,P1,x\nb,1,P1,y\nc,1,P2,z\n")
    items = load_corpus(root)
    assert [(i.id, i.label, i.patient) for i in items] == [("a", 0, "P1"), ("b", 1, "P1"), ("c", 1, "P2")]
    assert items[0].mask_uri.endswith("masks/a.png") and items[1].mask_uri is None
    assert items[2].uri.endswith("images/c.png")


def test_patient_defaults_and_unlabelled_images_are_kept(tmp_path):
    root = make_labelled(tmp_path, "\ufeffid,label\na,0\nb,1\n", images=("a", "b", "extra"), ext=".jpg")
    items = {i.id: i for i in load_corpus(root)}
    assert items["a"].patient == "a" and items["b"].label == 1
    assert items["extra"].label is None  # not in labels.csv: kept, unlabelled


def test_bad_labels_are_clear_errors(tmp_path):
    with pytest.raises(StorageError, match="no image"):
        load_corpus(make_labelled(tmp_path / "1", "id,label\na,0\nzz,1\n"))
    with pytest.raises(DecodeError, match="not an integer"):
        load_corpus(make_labelled(tmp_path / "2", "id,label\na,sick\n"))
    with pytest.raises(DecodeError, match="duplicate"):
        load_corpus(make_labelled(tmp_path / "3", "id,label\na,0\na,1\n"))
    with pytest.raises(DecodeError, match="'id' column"):
        load_corpus(make_labelled(tmp_path / "4", "name,label\na,0\n"))


def test_unlabelled_archive(tmp_path):
    write_bytes(str(tmp_path / "site1" / "p7" / "1.2.3.4"), b"dcm")
    write_bytes(str(tmp_path / "site2" / "x.png"), b"png")
    items = load_corpus(str(tmp_path))
    assert [(i.id, i.label, i.patient) for i in items] == [("site1/p7/1.2.3.4", None, "site1/p7/1.2.3.4"),
                                                          ("site2/x", None, "site2/x")]
    with pytest.raises(StorageError):
        load_corpus(str(tmp_path / "missing"))


def _items(n_patients=40, per_patient=3):
    return [CorpusItem(f"p{p}-{k}", f"/x/p{p}-{k}.png", None, p % 2 if p < 30 else p % 3 % 2, f"p{p}")
            for p in range(n_patients) for k in range(per_patient)]


def test_patient_split_is_disjoint_stratified_and_seeded():
    items = _items()
    train, val = patient_split(items, 0.25, seed=3)
    assert len(train) + len(val) == len(items)
    assert not {i.patient for i in train} & {i.patient for i in val}
    val_labels = Counter(i.label for i in val)
    assert val_labels[0] > 0 and val_labels[1] > 0
    assert abs(len({i.patient for i in val}) - 10) <= 1
    assert patient_split(items, 0.25, seed=3) == (train, val)
    assert patient_split(items, 0.25, seed=4) != (train, val)
    assert patient_split(items, 0.0)[1] == []
    with pytest.raises(ConfigError):
        patient_split(items, 1.0)


def test_shared_corpora(shared_data):
    v7 = load_corpus(str(shared_data / "kermany_v7"))
    assert len(v7) == 240 and all(i.mask_uri for i in v7) and Counter(i.label for i in v7) == {0: 120, 1: 120}
    # kermany_v7's labels.csv has no patient column: provenance.csv supplies it (several images per patient).
    assert len({i.patient for i in v7}) < 240
    train, val = patient_split(v7, 0.2, seed=0)
    assert not {i.patient for i in train} & {i.patient for i in val}
    cls = load_corpus(str(shared_data / "kermany_cls"))
    assert len(cls) == 2000 and all(i.mask_uri is None and i.label in (0, 1) for i in cls)
    assert cls[0].patient != cls[0].id


@pytest.mark.s3
def test_labelled_corpus_on_s3(s3_server):
    root = s3_server.make_bucket("lungdr-corpus")
    make_labelled(f"{root}/set", "id,label\na,0\nb,1\nc,0\n")
    items = load_corpus(f"{root}/set")
    assert [(i.id, i.label) for i in items] == [("a", 0), ("b", 1), ("c", 0)]
    assert items[0].uri == f"{root}/set/images/a.png" and items[0].mask_uri == f"{root}/set/masks/a.png"
