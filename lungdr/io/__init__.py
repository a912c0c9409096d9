"""Ray-free image I/O: URIs (local / S3), decoding (PNG, JPEG, DICOM, NumPy), CT volumes and corpora."""

from lungdr.io.corpus import CorpusItem, load_corpus, patient_split
from lungdr.io.decode import Decoded, SafeMeta, decode, sniff_format, to_uint8, to_unit
from lungdr.io.dicom import decode_dicom, dicom_to_hu, read_dataset
from lungdr.io.uri import exists, is_s3, item_id, join_uri, list_uris, read_bytes, s3_client, write_bytes
from lungdr.io.volume import CTVolume, load_volume, read_ct_series, resample_volume

__all__ = [
    "CTVolume",
    "CorpusItem",
    "Decoded",
    "SafeMeta",
    "decode",
    "decode_dicom",
    "dicom_to_hu",
    "exists",
    "is_s3",
    "item_id",
    "join_uri",
    "list_uris",
    "load_corpus",
    "load_volume",
    "patient_split",
    "read_bytes",
    "read_dataset",
    "read_ct_series",
    "resample_volume",
    "s3_client",
    "sniff_format",
    "to_uint8",
    "to_unit",
    "write_bytes",
]
