"""``python scripts/compare_optimizers.py ARGS`` is ``python -m nested_research.studies.comparison ARGS`` (``--help`` says more)."""

import os
import sys

os.execv(sys.executable, [sys.executable, "-m", "nested_research.studies.comparison", *sys.argv[1:]])
