"""`python -m pipeline.cli ...`: the same program as run_stream.py and `depthstream`."""

import sys

from pipeline.cli import main

sys.exit(main())
