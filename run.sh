#!/usr/bin/env bash
# One command for a fresh machine:
#   ./run.sh [run_stream.py options]   set up .venv (first time only) and run the program (the demo without options)
#   ./run.sh test [pytest options]     set up .venv with the test extras and run the test suite
#   ./run.sh bench [script options]    run benchmarks/bench_model.py (see benchmarks/README.md for the others)
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0; CUDA machines: e.g. TORCH_SPEC=torch).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${DEPTHSTREAM_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

mode=run
case "${1:-}" in
  test|bench) mode=$1; shift ;;
esac
extras=""
[ "$mode" = run ] || extras="[test]"

stamp="$VENV/.installed-$( (cat pyproject.toml; echo "$extras $TORCH_SPEC") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "run.sh: setting up $VENV (first run only) ..." >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".$extras"
  touch "$stamp"
fi

case "$mode" in
  run) exec "$VENV/bin/python" run_stream.py "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q "$@" ;;
  bench) exec "$VENV/bin/python" benchmarks/bench_model.py "$@" ;;
esac
