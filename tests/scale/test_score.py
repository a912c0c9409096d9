"""Batch scoring: one row per input from a folder and an S3 prefix, errors with reasons, resume, no PHI."""

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lungdr.config import ScoreConfig
from lungdr.errors import ConfigError

PHI = ("Doe^Jane", "MRN-99887766")
# id -> error code (None = scored) for the archive below
EXPECTED = {
    "a/chest_png": None,
    "a/chest_jpg": None,
    "a/b/scan": None,  # DICOM carrying PHI in its header
    "a/b/misnamed": None,  # DICOM saved as .png
    "a/noext": None,  # PNG without extension
    "twin.png": None,  # twin.png and twin.dcm would both be "twin"
    "twin.dcm": None,
    "a/empty": "empty_file",
    "a/b/truncated": "undecodable",
    "a/notes": "unsupported_format",
}


def _phantom(rng, shape=(72, 60)) -> np.ndarray:
    """A chest-like uint8 image: bright body, two darker lung fields, noise."""
    img = np.full(shape, 200, np.uint8)
    h, w = shape
    cv2.ellipse(img, (w // 3, h // 2), (w // 7, h // 3), 0, 0, 360, 70, -1)
    cv2.ellipse(img, (2 * w // 3, h // 2), (w // 7, h // 3), 0, 0, 360, 70, -1)
    return np.clip(img + rng.normal(0, 8, shape), 0, 255).astype(np.uint8)


def archive_files(seed: int = 0) -> dict[str, bytes]:
    """Relative path -> bytes: good and bad files of every format, recognised by content."""
    from lungdr.testing.dicom import make_dicom

    rng = np.random.default_rng(seed)
    png = lambda: cv2.imencode(".png", _phantom(rng))[1].tobytes()  # noqa: E731
    dicom = make_dicom(_phantom(rng).astype(np.uint16) * 16, bits_stored=12, PatientName=PHI[0], PatientID=PHI[1],
                       Modality="DX")
    return {
        "a/chest_png.png": png(),
        "a/chest_jpg.jpg": cv2.imencode(".jpg", _phantom(rng))[1].tobytes(),
        "a/b/scan.dcm": dicom,
        "a/b/misnamed.png": make_dicom(_phantom(rng), PatientName=PHI[0], PatientID=PHI[1]),
        "a/noext": png(),
        "twin.png": png(),
        "twin.dcm": make_dicom(_phantom(rng)),
        "a/empty.png": b"",
        "a/b/truncated.png": png()[:200],
        "a/notes.txt": b"radiology worklist export, not an image\n",
    }


def write_archive(root: Path) -> Path:
    for rel, data in archive_files().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture()
def bundle(tiny_bundle_dir) -> str:
    return str(tiny_bundle_dir)


def read_output(output: str) -> pd.DataFrame:
    from lungdr.io import read_bytes
    from lungdr.scale.score import part_uris

    tables = [pd.read_parquet(io.BytesIO(read_bytes(u))) for u in part_uris(output)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def check_rows(df: pd.DataFrame, version: str) -> None:
    """One row per input; expected errors; scores sane on the rest."""
    assert sorted(df["id"]) == sorted(EXPECTED)
    for _, row in df.iterrows():
        want = EXPECTED[row["id"]]
        if want is None:
            assert pd.isna(row["error"]), (row["id"], row["error"])
            assert 0.0 <= row["p_abnormal"] <= 1.0
            assert all(0.0 <= row[f"p_{m}"] <= 1.0 for m in ("svm", "transfer", "cnn3d"))
            assert all(row[f"vote_{m}"] == int(row[f"p_{m}"] >= 0.5) for m in ("svm", "transfer", "cnn3d"))
            assert row["repredicted"] in (True, False)
            assert 0.0 <= row["lung_area_fraction"] <= 1.0
            assert row["needs_review"] == pd.isna(row["label"]), "label is null exactly when review is needed"
        else:
            assert row["error"].split(":")[0] == want, (row["id"], row["error"])
            assert pd.isna(row["p_abnormal"])
        assert row["model_version"] == version


# ------------------------------------------------------------------ Ray-free pieces

def test_list_inputs_lists_every_file_with_unique_ids(tmp_path):
    from lungdr.scale.score import list_inputs

    rows = list_inputs(str(write_archive(tmp_path)))
    assert sorted(r["id"] for r in rows) == sorted(EXPECTED)
    assert [r["id"] for r in list_inputs(str(tmp_path), limit=3)] == sorted(EXPECTED)[:3]


def test_part_writer_writes_whole_parts_and_written_reads_them_back(tmp_path):
    from lungdr.scale.score import OUTPUT_SCHEMA, PartWriter, written

    out = str(tmp_path / "out")
    writer = PartWriter(out, rows_per_part=2)
    for chunk in (["a", "b", "c"], ["d"], ["e"]):
        writer.add(pa.Table.from_pylist([{"id": i, "uri": f"/x/{i}", "model_version": "v1"} for i in chunk],
                                        schema=OUTPUT_SCHEMA))
    assert len(writer.parts) == 2  # a,b and c,d are complete; e waits in the buffer
    (tmp_path / "out" / ".part-x.parquet.tmp").write_bytes(b"half a part")  # a killed write's leftover
    before_close = written(out)
    assert before_close["ids"] == {"a", "b", "c", "d"}
    writer.close()
    after = written(out)
    assert after == {"ids": {"a", "b", "c", "d", "e"}, "model_versions": {"v1"}, "duplicates": 0}
    assert written(str(tmp_path / "nothing-here"))["ids"] == set()


def test_unreadable_part_is_a_clear_error(tmp_path):
    from lungdr.errors import StorageError
    from lungdr.scale.score import written

    (tmp_path / "part-bad-00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(StorageError, match="part-bad"):
        written(str(tmp_path))


def test_result_row_keeps_each_models_own_prediction_beside_the_re_vote():
    from lungdr.scale.score import OUTPUT_SCHEMA, result_row

    row = {"id": "a", "uri": "/a.png", "label": 1}
    result = {"label": None, "p_abnormal": 0.55, "needs_review": True, "review_reason": "no_majority",
              "repredicted": True, "lung_area_fraction": 0.3,
              "votes": {"svm": 1, "transfer": 1, "cnn3d": 1}, "probabilities": {"svm": 0.7, "transfer": 0.8, "cnn3d": 0.6},
              "first_probabilities": {"svm": 0.4, "transfer": 0.6, "cnn3d": 0.45}}
    out = result_row(row, result, "v1")
    assert out["repredicted"] is True and out["p_svm"] == 0.4 and out["vote_svm"] == 0 and out["vote_transfer"] == 1
    pa.Table.from_pylist([out], schema=OUTPUT_SCHEMA)  # fits the Parquet schema


def test_gpus_per_actor():
    from lungdr.scale.score import gpus_per_actor

    assert gpus_per_actor(ScoreConfig(), 0.0) == 0.0
    assert gpus_per_actor(ScoreConfig(), 1.0) == 0.5  # one segment + one classify actor share it
    assert gpus_per_actor(ScoreConfig(segment_actors=1, classify_actors=1), 8.0) == 1.0
    assert gpus_per_actor(ScoreConfig(num_gpus_per_actor=0.0), 4.0) == 0.0


# ------------------------------------------------------------------ the Ray pipeline

def test_score_folder_one_row_per_input_masks_and_no_phi(ray_session, bundle, tmp_path):
    from lungdr.bundle import open_bundle
    from lungdr.io import decode, read_bytes
    from lungdr.scale.score import score

    root = write_archive(tmp_path / "archive")
    out = tmp_path / "scores"
    cfg = ScoreConfig(batch_size=3, rows_per_part=4, write_masks=True, progress_bars=False)
    summary = score(str(root), bundle, str(out), cfg=cfg)

    version = open_bundle(bundle).model_version
    df = pd.read_parquet(out)  # the output folder is a plain Parquet dataset (masks live under _masks/)
    check_rows(df, version)
    n_bad = sum(v is not None for v in EXPECTED.values())
    assert summary["processed"] == len(EXPECTED) and summary["errors"] == n_bad
    assert summary["errors_by_reason"] == {"empty_file": 1, "undecodable": 1, "unsupported_format": 1}
    assert summary["needs_review"] == int(df["needs_review"].sum())
    assert json.loads((out / "_summary.json").read_text())["processed"] == len(EXPECTED)

    for _, row in df[df["error"].isna()].iterrows():  # masks at the input's own size
        src = [p for p in archive_files() if p.rsplit(".", 1)[0] == row["id"] or p == row["id"]][0]
        mask = decode(read_bytes(row["mask_uri"]), row["mask_uri"]).image
        assert mask.shape == decode(archive_files()[src], src).image.shape
        assert set(np.unique(mask)) <= {0.0, 1.0}

    blob = " ".join(map(str, df.to_numpy().ravel())) + " ".join(str(p) for p in out.rglob("*"))
    for value in PHI:
        assert value not in blob
        for f in out.rglob("*"):
            assert value.encode() not in f.read_bytes() if f.is_file() else True


def test_score_s3_prefix_and_resume(ray_session, bundle, s3_server):
    from lungdr.bundle import open_bundle
    from lungdr.scale.score import score

    bucket = s3_server.make_bucket("score-test")
    client = s3_server.client()
    for rel, data in archive_files().items():
        client.put_object(Bucket="score-test", Key=f"archive/{rel}", Body=data)
    out = f"{bucket}/scores"
    cfg = ScoreConfig(batch_size=4, rows_per_part=3, progress_bars=False)

    first = score(f"{bucket}/archive", bundle, out, cfg=cfg, limit=4)  # an interrupted run: 4 of 10 done
    assert first["processed"] == 4
    second = score(f"{bucket}/archive", bundle, out, cfg=cfg)
    assert second["already_written"] == 4 and second["processed"] == len(EXPECTED) - 4
    third = score(f"{bucket}/archive", bundle, out, cfg=cfg)
    assert third["processed"] == 0 and third["already_written"] == len(EXPECTED)

    df = read_output(out)
    check_rows(df, open_bundle(bundle).model_version)
    assert df["id"].is_unique


def test_output_of_another_model_is_refused(bundle, tmp_path):
    from lungdr.scale.score import OUTPUT_SCHEMA, PartWriter, score

    writer = PartWriter(str(tmp_path), rows_per_part=10)
    writer.add(pa.Table.from_pylist([{"id": "x", "uri": "/x", "model_version": "other"}], schema=OUTPUT_SCHEMA))
    writer.close()
    with pytest.raises(ConfigError, match="other"):
        score(str(tmp_path / "nowhere"), bundle, str(tmp_path))
