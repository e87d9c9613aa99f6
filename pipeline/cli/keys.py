"""`depthstream keys DIR --name NAME`: a CURVE key pair for authenticated tcp links.

Writes DIR/NAME.key (the public key: copy it to the peers that must accept this host) and
DIR/NAME.key_secret (both keys, mode 0600: it stays on this host), in zmq.auth's format, then
prints how the options use them. An existing key is never overwritten.
"""

from __future__ import annotations

import argparse
import os

from pipeline import curve
from pipeline.errors import ConfigError

from .exits import EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, CliError
from .options import _Parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="depthstream keys",
        description="Write a CURVE key pair (DIR/NAME.key public, DIR/NAME.key_secret secret) "
        "for the tcp links between hosts: the hub's --workers / --ingest / --publish, "
        "`depthstream worker`, `depthstream capture`, pipeline.client.DepthSubscriber.",
    )
    parser.add_argument(
        "directory", metavar="DIR", help="folder for the key files (made if needed)"
    )
    parser.add_argument("--name", required=True, help="key name: DIR/NAME.key and .key_secret")
    parser.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error"),
        help="logging detail (default warning)",
    )  # fmt: skip
    return parser


def usage(public: str, secret: str) -> str:
    """How the options take the two files."""
    return "\n".join([
        f"public key: {public}  (copy it to the peers that must accept this one)",
        f"secret key: {secret}  (mode 0600; keep it on this host)",
        "use it on a hub (binds; DIR holds the public keys of the workers/cameras/subscribers "
        "it accepts):",
        f"  depthstream ... --workers tcp://0.0.0.0:PORT --curve-secret {secret} "
        "--curve-allow DIR",
        "on a worker or camera (connects; HUB.key is the hub's public key):",
        f"  depthstream worker --hub tcp://HUB:PORT --curve-secret {secret} --curve-server HUB.key",
        f"  depthstream capture --hub tcp://HUB:PORT --curve-secret {secret} "
        "--curve-server HUB.key ...",
        "in a subscriber (Python):",
        f"  DepthSubscriber(endpoint, curve_secret={secret!r}, curve_server='HUB.key')",
    ])  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if os.path.exists(args.directory) and not os.path.isdir(args.directory):
        raise CliError(f"keys: {args.directory} is not a directory", EXIT_OUTPUT)
    try:
        public, secret = curve.generate(args.directory, args.name)  # the secret: 0600 at once
    except ConfigError as e:  # a key there already, a bad name: one line, without torch
        raise CliError(str(e), EXIT_USAGE) from None
    except OSError as e:  # a file in the way, no permission, a full disk
        where = e.filename or args.directory
        raise CliError(f"keys: cannot write {where}: {e.strerror or e}", EXIT_OUTPUT) from None
    print(usage(public, secret))
    return EXIT_OK
