"""Limits that the config, the wire format and the clients all check, in a module that imports
nothing heavy: `pipeline.client` and `pipeline.messages` import these, not `pipeline.config` (which
imports OpenCV for its colour maps). pipeline.config re-exports them."""

from __future__ import annotations

import re

STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # safe in file names and topics
MAX_FPS = 1000.0  # frame rates: sources, pacing and video files
MAX_IMAGE_SIDE = 16384  # camera resolution; the size a frame may declare
MAX_INPUT_SIDE = 8192  # model input
