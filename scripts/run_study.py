"""``python scripts/run_study.py ARGS`` is ``python -m nested_research.studies.run_all ARGS`` (``--help`` says more)."""

import os
import sys

os.execv(sys.executable, [sys.executable, "-m", "nested_research.studies.run_all", *sys.argv[1:]])
