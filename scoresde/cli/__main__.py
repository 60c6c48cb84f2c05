"""``python -m scoresde.cli``, as it ran before cli became a package (``python -m scoresde`` is the usual way)."""
import sys

from . import main

sys.exit(main())
