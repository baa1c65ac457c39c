"""``python scripts/bench_tracking.py ARGS`` is ``python -m nested_research.bench.tracking ARGS`` (``--help`` says more)."""

import os
import sys

os.execv(sys.executable, [sys.executable, "-m", "nested_research.bench.tracking", *sys.argv[1:]])
