"""On-disk cache of built engines (TensorRT plans, exported ONNX models), keyed by what shapes them.

A key is the SHA-256 of a JSON dict of fields: the weights' digest, input shape, batch size,
precision, GPU model, library versions... Any change of a field is a different key, so a stale
engine is never loaded. Each entry is two files written atomically, the blob first and then its
metadata (which holds the blob's SHA-256), so a crash mid-write leaves no entry that looks valid.
A blob that is missing, truncated, altered or that the loader rejects is rebuilt with a warning.

Blobs are engine formats (TensorRT plans, ONNX protobufs): loading them runs no Python code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from .config import MODEL_FIELDS
from .fileio import atomic_write

log = logging.getLogger(__name__)

T = TypeVar("T")
CACHE_FORMAT = 1  # bump when the layout of entries or what builders put in them changes


def default_cache_dir() -> str:
    """$DEPTHSTREAM_CACHE, else $XDG_CACHE_HOME/depthstream/engines, else ~/.cache/..."""
    if os.environ.get("DEPTHSTREAM_CACHE"):
        return os.environ["DEPTHSTREAM_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "depthstream", "engines")


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes) and of the config.

    Keys the cache by the weights themselves, so an in-memory model and a checkpoint directory with
    the same weights share entries, and a checkpoint rewritten in place invalidates its engines.
    """
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:  # the fields that define the network, not where it was loaded from
        fields = {name: getattr(config, name) for name in MODEL_FIELDS}
        h.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class CacheError(Exception):
    """An entry is unusable (the message says why); the caller rebuilds it."""


class EngineCache:
    """A directory of built engines; `load_or_build` says hit, built or rebuilt."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = os.fspath(directory)

    @staticmethod
    def key(fields: dict) -> str:
        blob = json.dumps({"cache_format": CACHE_FORMAT, **fields}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:40]

    def paths(self, fields: dict, suffix: str) -> tuple[str, str]:
        key = self.key(fields)
        base = os.path.join(self.directory, key)
        return base + suffix, base + ".json"

    def load_or_build(
        self,
        fields: dict,
        build: Callable[[], bytes],
        load: Callable[[bytes], T],
        *,
        suffix: str = ".engine",
    ) -> tuple[T, str]:
        blob_path, meta_path = self.paths(fields, suffix)
        status = "built"
        if os.path.exists(meta_path) or os.path.exists(blob_path):
            try:
                return load(self._read(fields, blob_path, meta_path)), "hit"
            except Exception as e:  # corrupt, truncated, or refused by the loader: rebuild
                log.warning("engine cache entry %s is unusable (%s); rebuilding it", blob_path, e)
                status = "rebuilt"
        blob = build()
        obj = load(blob)  # a fresh build that cannot be loaded is an error, not a cache problem
        self._write(fields, blob, blob_path, meta_path)
        return obj, status

    def _read(self, fields: dict, blob_path: str, meta_path: str) -> bytes:
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            with open(blob_path, "rb") as f:
                blob = f.read()
        except (OSError, ValueError) as e:
            raise CacheError(f"cannot read it: {e}") from None
        if not isinstance(meta, dict) or meta.get("fields") != json.loads(
            json.dumps(fields, sort_keys=True, default=str)
        ):
            raise CacheError("its metadata does not match the requested key")
        if meta.get("size") != len(blob):
            raise CacheError(f"{len(blob)} bytes where {meta.get('size')} were written")
        if meta.get("sha256") != hashlib.sha256(blob).hexdigest():
            raise CacheError("checksum mismatch")
        return blob

    def _write(self, fields: dict, blob: bytes, blob_path: str, meta_path: str) -> None:
        meta = {
            "fields": json.loads(json.dumps(fields, sort_keys=True, default=str)),
            "size": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        try:
            os.makedirs(self.directory, exist_ok=True)
            atomic_write(blob_path, blob, fsync=True)
            meta_json = json.dumps(meta, indent=2, sort_keys=True).encode()
            atomic_write(meta_path, meta_json, fsync=True)
        except OSError as e:  # read-only or full disk: run without caching rather than fail
            log.warning("cannot write engine cache entry %s (%s); running uncached", blob_path, e)
