"""Typed errors. Each has a short machine-readable ``code`` used in error rows and API answers."""


class LungdrError(Exception):
    code = "error"

    def row_reason(self) -> str:
        """``"<code>: <message>"`` as written to the ``error`` column of batch outputs."""
        return f"{self.code}: {self}"


class DecodeError(LungdrError):
    """Bytes claim a known format but cannot be decoded (truncated, corrupt)."""

    code = "undecodable"


class EmptyInputError(DecodeError):
    code = "empty_file"


class NoPixelDataError(DecodeError):
    code = "no_pixel_data"


class UnsupportedFormatError(LungdrError):
    """Not an image format lungdr reads (or a DICOM kind it refuses, e.g. multi-frame)."""

    code = "unsupported_format"


class MultiFrameError(UnsupportedFormatError):
    code = "multiframe_dicom"


class StorageError(LungdrError):
    code = "storage"


class BundleError(LungdrError):
    code = "bundle_invalid"


class BundleIntegrityError(BundleError):
    code = "bundle_hash_mismatch"


class ConfigError(LungdrError):
    code = "config"


def reason_of(exc: BaseException) -> str:
    """Error-row text for any exception; never includes file contents or headers."""
    if isinstance(exc, LungdrError):
        return exc.row_reason()
    return f"internal: {type(exc).__name__}: {exc}"[:500]
