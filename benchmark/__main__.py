import os
import sys

from benchmark.cli import main

try:
    sys.exit(main())
except BrokenPipeError:  # `... | head`: the reader left; no traceback, and none from Python's exit flush either
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)
