"""The optional system tools some tests use, each probed once, and a skip mark per tool.

`.ci/run` installs all of them; on a machine without one, the tests that need it skip and say
which package to install (never an error from a missing executable).
"""

from __future__ import annotations

import functools
import shutil

import pytest
from stream_server import RTSP_PACKAGES, rtsp_server_python

X_TOOLS = ("Xvfb", "xdotool", "xwininfo", "xdpyinfo")


@functools.cache
def missing(*tools: str) -> tuple[str, ...]:
    """The executables among `tools` that are not on PATH."""
    return tuple(t for t in tools if shutil.which(t) is None)


needs_ffmpeg = pytest.mark.skipif(
    bool(missing("ffmpeg")), reason="needs the ffmpeg CLI (apt-get install ffmpeg)"
)
needs_rtsp = pytest.mark.skipif(
    rtsp_server_python() is None,
    reason=f"needs GStreamer's RTSP server for python3 (apt-get install {RTSP_PACKAGES})",
)
needs_x = pytest.mark.skipif(
    bool(missing(*X_TOOLS)),
    reason=f"needs {', '.join(X_TOOLS)} (apt-get install xvfb xdotool x11-utils)",
)


def require_ffmpeg() -> None:
    """Skip the calling test (or fixture) when the ffmpeg CLI is not installed."""
    if missing("ffmpeg"):
        pytest.skip("needs the ffmpeg CLI (apt-get install ffmpeg)")
