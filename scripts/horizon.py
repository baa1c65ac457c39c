"""``python scripts/horizon.py ARGS`` is ``python -m nested_research.studies.horizon ARGS`` (``--help`` says more)."""

import os
import sys

os.execv(sys.executable, [sys.executable, "-m", "nested_research.studies.horizon", *sys.argv[1:]])
