"""``python scripts/ablation.py ARGS`` is ``python -m nested_research.studies.ablation ARGS`` (``--help`` says more)."""

import os
import sys

os.execv(sys.executable, [sys.executable, "-m", "nested_research.studies.ablation", *sys.argv[1:]])
