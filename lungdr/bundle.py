"""Model bundles: a folder or s3:// prefix holding model files, ``manifest.json`` and ``MODEL_CARD.md``.

The manifest lists every component with its SHA-256 and size, a ``model_version`` (short hash over the component
hashes) and its own ``manifest_sha256`` (over the rest of the manifest). ``open_bundle`` checks all of them and
refuses (``BundleIntegrityError``) a missing or modified component, an edited manifest or an unknown
``format_version``; unlisted extra files are ignored. The manifest is written last, so a half-written bundle
has none and is refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from lungdr import __version__
from lungdr.errors import BundleError, BundleIntegrityError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CARD = "MODEL_CARD.md"
_CHUNK = 1 << 20


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_relpath(rel: str) -> str:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or str(p) in (MANIFEST, "."):
        raise BundleError(f"invalid bundle component path {rel!r}")
    return str(p)


def model_version_of(components: dict) -> str:
    """Short hash over the model components' hashes (the card's text does not change the version)."""
    h = hashlib.sha256()
    for rel in sorted(components):
        if rel != CARD:
            h.update(f"{rel}\0{components[rel]['sha256']}\n".encode())
    return h.hexdigest()[:12]


def _manifest_hash(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on local disk (``root``) and its parsed manifest."""

    root: Path
    manifest: dict

    @property
    def model_version(self) -> str:
        return self.manifest["model_version"]

    def path(self, rel: str) -> Path:
        """Local path of a listed component."""
        rel = _check_relpath(rel)
        if rel not in self.manifest["components"]:
            raise BundleError(f"bundle has no component {rel!r}")
        return self.root / rel

    def has(self, rel: str) -> bool:
        return rel in self.manifest["components"]

    def card(self) -> str:
        return (self.root / CARD).read_text(encoding="utf-8") if self.has(CARD) else ""


def write_bundle(uri: str, files: dict[str, Path | bytes], manifest: dict, card: str) -> str:
    """Write ``files`` ({relpath: local path or bytes}), ``MODEL_CARD.md`` and the completed manifest to ``uri``
    (folder or s3:// prefix). ``manifest`` supplies the descriptive fields (kind, preprocess, training_data, metrics,
    caveats, ...); the hashes, versions and timestamps are filled in here. Returns ``uri``."""
    from lungdr.io import is_s3, join_uri, write_bytes

    if not files:
        raise BundleError("a bundle needs at least one component")
    blobs: dict[str, Path | bytes] = {_check_relpath(k): v for k, v in files.items()}
    blobs[CARD] = card.encode("utf-8")
    components = {}
    for rel, src in blobs.items():
        if isinstance(src, (bytes, bytearray)):
            components[rel] = {"sha256": hashlib.sha256(src).hexdigest(), "bytes": len(src)}
        else:
            src = Path(src)
            if not src.is_file():
                raise BundleError(f"bundle component {rel!r}: {src} is not a file")
            components[rel] = {"sha256": _sha256_file(src), "bytes": src.stat().st_size}
    full = {
        "format_version": FORMAT_VERSION,
        "kind": manifest.get("kind", "lungdr"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lungdr_version": __version__,
        **{k: v for k, v in manifest.items() if k not in ("components", "model_version", "manifest_sha256")},
        "model_version": model_version_of(components),
        "components": components,
    }
    full.setdefault("caveats", [])
    full["manifest_sha256"] = _manifest_hash(full)
    for rel, src in blobs.items():
        data = bytes(src) if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
        target = join_uri(uri, rel) if is_s3(uri) else str(Path(uri) / rel)
        if not is_s3(uri):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        write_bytes(target, data)
    manifest_bytes = json.dumps(full, indent=2, sort_keys=False).encode()
    write_bytes(join_uri(uri, MANIFEST) if is_s3(uri) else str(Path(uri) / MANIFEST), manifest_bytes)
    return uri


def _parse_manifest(data: bytes, where: str) -> dict:
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleIntegrityError(f"{where}: manifest.json is not valid JSON") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("components"), dict):
        raise BundleIntegrityError(f"{where}: manifest.json has no components table")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleIntegrityError(
            f"{where}: unknown bundle format_version {manifest.get('format_version')!r} (this lungdr reads {FORMAT_VERSION})"
        )
    if manifest.get("manifest_sha256") != _manifest_hash(manifest):
        raise BundleIntegrityError(f"{where}: manifest.json was edited after the bundle was written")
    if manifest.get("model_version") != model_version_of(manifest["components"]):
        raise BundleIntegrityError(f"{where}: model_version does not match the component hashes")
    for rel in manifest["components"]:
        _check_relpath(rel)
    return manifest


def verify(root: Path, manifest: dict) -> None:
    """Every listed component exists under ``root`` with the listed size and SHA-256."""
    for rel, entry in manifest["components"].items():
        p = root / rel
        if not p.is_file():
            raise BundleIntegrityError(f"bundle component {rel!r} is missing")
        if p.stat().st_size != entry.get("bytes") or _sha256_file(p) != entry.get("sha256"):
            raise BundleIntegrityError(f"bundle component {rel!r} was modified (hash mismatch)")


def cache_root() -> Path:
    """Where s3 bundles are downloaded: ``LUNGDR_CACHE`` or ``~/.cache/lungdr``, then ``bundles/``."""
    return Path(os.environ.get("LUNGDR_CACHE") or Path.home() / ".cache" / "lungdr") / "bundles"


def open_bundle(uri: str | Path, cache_dir: str | Path | None = None) -> Bundle:
    """Open and verify a bundle. An s3:// bundle is downloaded once per ``model_version`` into the cache (and
    re-verified on every open; a corrupted cache entry is downloaded again)."""
    from lungdr.io import is_s3, join_uri, read_bytes

    uri = str(uri)
    if not is_s3(uri):
        root = Path(uri)
        if not (root / MANIFEST).is_file():
            raise BundleError(f"{uri} is not a lungdr bundle (no manifest.json)")
        manifest = _parse_manifest((root / MANIFEST).read_bytes(), uri)
        verify(root, manifest)
        return Bundle(root, manifest)
    try:
        manifest_bytes = read_bytes(join_uri(uri, MANIFEST))
    except Exception as exc:  # noqa: BLE001 - storage errors become one readable bundle error
        raise BundleError(f"{uri} is not a readable lungdr bundle: {exc}") from exc
    manifest = _parse_manifest(manifest_bytes, uri)
    root = Path(cache_dir) if cache_dir else cache_root() / manifest["model_version"]
    try:
        verify(root, manifest)
        if (root / MANIFEST).read_bytes() == manifest_bytes:
            return Bundle(root, manifest)
    except (BundleIntegrityError, OSError):
        pass
    root.mkdir(parents=True, exist_ok=True)
    for rel in manifest["components"]:
        try:
            data = read_bytes(join_uri(uri, rel))
        except Exception as exc:  # noqa: BLE001
            raise BundleIntegrityError(f"bundle component {rel!r} is missing or unreadable: {exc}") from exc
        _atomic_write(root / rel, data)
    verify(root, manifest)
    _atomic_write(root / MANIFEST, manifest_bytes)
    return Bundle(root, manifest)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
