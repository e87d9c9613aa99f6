"""The checkpoint as the command line sees it: a local path that does not exist is said so at
once (never looked up on the hub), and a run without one warns loudly that the weights are random.

Everything else (reading config.json and the weights, fetching a hub id) is the engine's, inside
the inference thread; its errors come back as exit code 4.
"""

from __future__ import annotations

import os

from glpn.hub import looks_local

from .exits import EXIT_MODEL, CliError

# (hub id, where the README puts it, named config, what it is)
PUBLISHED = (
    ("vinvino02/glpn-kitti", "checkpoints/glpn-kitti", "kitti", "outdoor, up to 80 m"),
    ("vinvino02/glpn-nyu", "checkpoints/glpn-nyu", "nyu", "indoor, up to 10 m"),
)


def how_to_get_checkpoints() -> str:
    lines = ["For real metric depth, download a published checkpoint and pass its directory:"]
    for hub_id, local, _, what in PUBLISHED:
        lines.append(f"    hf download {hub_id} --local-dir {local}   # {what}")
    lines += [
        "    (or: git clone https://huggingface.co/vinvino02/glpn-kitti checkpoints/glpn-kitti)",
        "    depthstream --config kitti --checkpoint checkpoints/glpn-kitti --source VIDEO",
    ]
    return "\n".join(lines)


def random_weights_warning() -> str:
    bar = "!" * 78
    return "\n".join(
        [
            bar,
            "WARNING: no checkpoint given (--checkpoint): the model has RANDOM weights.",
            "The depth this run writes is NOT meaningful. The random weights are spread",
            "(glpn.synthetic.spread_init_) only so that the output varies with the image.",
            how_to_get_checkpoints(),
            bar,
        ]
    )


def check_checkpoint(path: str) -> None:
    """CliError (exit 4) for a local-looking checkpoint path that is not there: ./x, ../x, /x,
    ~/x, a/b/c, or checkpoints/glpn-nyu next to a checkpoints/ folder. A hub id is left to the
    engine."""
    local = os.path.expanduser(path)
    if os.path.isdir(local) or os.path.exists(local) or not looks_local(path):
        return  # a directory, a file (the engine says it is not one) or a hub id
    name = os.path.basename(os.path.normpath(local))
    hub_id = next((h for h, _, _, _ in PUBLISHED if h.endswith(f"/{name}")), None)
    where = os.path.normpath(path)
    if hub_id is not None:
        how = f"download it with `hf download {hub_id} --local-dir {where}`"
    else:
        how = (
            "pass the directory holding config.json and the weights, or a hub id such as "
            "vinvino02/glpn-kitti"
        )
    raise CliError(f"checkpoint directory {where} does not exist; {how}", EXIT_MODEL)
