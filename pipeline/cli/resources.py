"""What ships with the package: the named configs, the demo clip, the version.

One copy of each lives in the package (pipeline/configs/*.yaml, pipeline/assets/demo.mp4); the
repository's top-level configs/ and assets/demo.mp4 are symlinks to them, so README commands and
an installed `depthstream` read the same files.
"""

from __future__ import annotations

import os
import re

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../pipeline
CONFIG_DIR = os.path.join(PACKAGE_DIR, "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "default.yaml")
DEMO_CLIP = os.path.join(PACKAGE_DIR, "assets", "demo.mp4")
DEMO_OUTPUT = os.path.join("outputs", "demo")  # relative to the current directory


def named_configs() -> list[str]:
    """Names `--config` accepts besides a path: default, kitti, multi_stream, nyu."""
    if not os.path.isdir(CONFIG_DIR):
        return []
    return sorted(n[: -len(".yaml")] for n in os.listdir(CONFIG_DIR) if n.endswith(".yaml"))


def config_path(name_or_path: str) -> str:
    """A config file that exists as given (relative to the working directory), else the packaged
    config of that name ("kitti" or "kitti.yaml"); unchanged when neither exists (the reader then
    says the file was not found)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    name = name_or_path[: -len(".yaml")] if name_or_path.endswith(".yaml") else name_or_path
    if name in named_configs():
        return os.path.join(CONFIG_DIR, f"{name}.yaml")
    return name_or_path


def version() -> str:
    """The installed distribution's version; from pyproject.toml in a source checkout that was
    never installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("depthstream")
    except PackageNotFoundError:
        pass
    pyproject = os.path.join(os.path.dirname(PACKAGE_DIR), "pyproject.toml")
    try:
        with open(pyproject, encoding="utf-8") as f:
            m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
    except OSError:
        m = None
    return m[1] if m else "unknown"
