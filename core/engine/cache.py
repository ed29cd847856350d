"""On-disk cache of computed vectors, addressed by content.

An entry's key is a sha256 of everything that changes the numbers: the model's weight files and config (by
content, not by name or path), the base's key, the probe set, the layer, the dtype and the engine version. So a
renamed or moved model is still a hit, and a retrained one is a miss. File hashes are memoised by (path, size,
mtime_ns) so big weight files are read once, not on every run.

Entries are written atomically (a temporary file, then ``os.replace``): a killed run leaves either the old entry,
the new one, or a stray temporary file that is ignored. Each entry carries a checksum of its numbers, so a corrupt
or truncated entry is detected, logged, deleted and recomputed.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger(__name__)

CACHE_ENV = "DELTA_ATLAS_CACHE"
ENTRY_FORMAT = 1
CHUNK = 8 << 20  # bytes read at a time when hashing a file


def default_cache_dir() -> Path:
    """``$DELTA_ATLAS_CACHE`` or ``~/.cache/delta-atlas``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "delta-atlas").expanduser()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers only ever see the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


class FileHasher:
    """sha256 of files' contents, remembered (in ``memo_path``, when given) by (path, size, mtime_ns)."""

    def __init__(self, memo_path: Path | None = None):
        self.memo_path = memo_path
        self.memo: dict[str, list] = {}
        self.dirty = False
        if memo_path is not None and memo_path.is_file():
            try:
                self.memo = json.loads(memo_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("File-hash memo %s is damaged; rebuilding it.", memo_path)

    def digest(self, path: Path) -> str:
        real = Path(path).resolve()                       # hub snapshots are symlinks into a blob store
        stat = real.stat()
        known = self.memo.get(str(real))
        if known is not None and known[:2] == [stat.st_size, stat.st_mtime_ns]:
            return known[2]
        value = sha256_file(real)
        self.memo[str(real)] = [stat.st_size, stat.st_mtime_ns, value]
        self.dirty = True
        return value

    def save(self) -> None:
        if self.memo_path is not None and self.dirty:
            atomic_write(self.memo_path, json.dumps(self.memo).encode())
            self.dirty = False


def content_key(files: Iterable[Path], hasher: FileHasher) -> str:
    """One key for a set of files: their names and contents (not their folder, so moving a model keeps it)."""
    lines = sorted(f"{Path(f).name}:{hasher.digest(f)}" for f in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def entry_key(**parts) -> str:
    """The cache key of one computed array, from named parts (model key, base key, probes digest, layer...)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class VectorCache:
    """float32 arrays on disk under ``root/vectors``, one self-checking JSON file per key."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.hasher = FileHasher(self.root / "file_hashes.json")

    def path(self, key: str) -> Path:
        return self.root / "vectors" / key[:2] / f"{key}.json"

    def get(self, key: str) -> np.ndarray | None:
        """The array stored under ``key``; None when absent or corrupt (a corrupt entry is deleted)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_bytes())
            raw = base64.b64decode(entry["data"], validate=True)
            if entry["key"] != key or entry["format"] != ENTRY_FORMAT:
                raise ValueError("key or format does not match")
            if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
                raise ValueError("checksum does not match")
            array = np.frombuffer(raw, dtype=np.float32).reshape(entry["shape"]).copy()
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            log.warning("Cache entry %s is corrupt (%s); it will be recomputed.", path, exc)
            path.unlink(missing_ok=True)
            return None
        return array

    def put(self, key: str, array: np.ndarray, info: dict | None = None) -> Path:
        """Store ``array`` (as float32) under ``key``; ``info`` is kept alongside for people reading the cache."""
        raw = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        entry = {"format": ENTRY_FORMAT, "key": key, "shape": list(np.shape(array)), "dtype": "float32",
                 "sha256": hashlib.sha256(raw).hexdigest(), "info": info or {},
                 "data": base64.b64encode(raw).decode("ascii")}
        path = self.path(key)
        atomic_write(path, json.dumps(entry).encode())
        return path
