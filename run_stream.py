#!/usr/bin/env python3
"""depthstream: metric depth (GLPN) from cameras, video files, network streams and image folders.

The same program as the installed `depthstream` command (pipeline.cli); run with --help for every
option and the exit codes. `import pipeline` loads nothing heavy, so pipeline.cli sets
OMP_WAIT_POLICY before torch is imported.
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
