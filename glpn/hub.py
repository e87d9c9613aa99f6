"""Where a checkpoint lives: a local directory, or a Hugging Face hub id fetched into the cache.

Imports nothing from glpn, so config.py, checkpoint.py and processing.py can all use it without
an import cycle. `CheckpointError` is defined here for that reason (glpn.CheckpointError is it).
"""

from __future__ import annotations

import os
import re

CONFIG_NAME = "config.json"
# "owner/name" as the hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LOCAL_PREFIXES = ("./", "../", "/", "~")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be found or read, or does not fit the model; the message says why."""


def looks_local(path: str) -> bool:
    """True when `path` can only mean a local directory: ./x, ../x, /x, ~x, a/b/c, or a/b when
    a directory named a exists here (checkpoints/glpn-nyu next to a checkpoints/ folder)."""
    if path.startswith(_LOCAL_PREFIXES) or path.count("/") > 1:
        return True
    first = path.split("/", 1)[0]
    return "/" in path and os.path.isdir(first)


def is_hub_id(path: str) -> bool:
    """True for "owner/name" that is not a local-looking path."""
    return bool(_HUB_ID.match(path)) and not looks_local(path)


def resolve_checkpoint_dir(path: str | os.PathLike, **hub_options) -> str:
    """A local directory as is; a hub id ("vinvino02/glpn-kitti") through huggingface_hub if
    possible. A local path that does not exist is never looked up on the hub. `hub_options`
    (revision, cache_dir, token, force_download, local_files_only) go to
    snapshot_download; a local directory ignores them, as in transformers."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(
            f"{path}: is a file; pass the checkpoint directory holding {CONFIG_NAME} "
            "and the weights"
        )
    if not is_hub_id(path):
        raise CheckpointError(f"no such checkpoint directory: {path} does not exist")
    how = (
        f"download it where the Hugging Face hub is reachable "
        f"(`hf download {path} --local-dir DIR`, "
        "or git clone) and pass the local directory DIR"
    )
    try:
        from huggingface_hub import snapshot_download  # optional: depthstream[hub]
    except ImportError:
        raise CheckpointError(
            f"{path}: not a local directory, and huggingface_hub is not installed to fetch it; "
            f"{how}"
        ) from None
    patterns = [CONFIG_NAME, "*.safetensors", "*.bin", "*.json"]
    options = {k: v for k, v in hub_options.items() if v is not None}
    if not options.get("force_download"):
        try:  # the local cache first: works offline after one download
            cached = {**options, "local_files_only": True}
            return snapshot_download(path, allow_patterns=patterns, **cached)
        except Exception:
            pass
    if options.get("local_files_only"):
        raise CheckpointError(f"{path}: not in the local hub cache (local_files_only=True); {how}")
    try:
        return snapshot_download(path, allow_patterns=patterns, **options)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: could not fetch from the hub ({reason}); {how}") from None
