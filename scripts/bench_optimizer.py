"""``python scripts/bench_optimizer.py ARGS`` is ``python -m nested_research.bench.optimizer ARGS`` (``--help`` says more)."""

import os
import sys

os.execv(sys.executable, [sys.executable, "-m", "nested_research.bench.optimizer", *sys.argv[1:]])
