"""``longclip`` with the toy method of ``toy_method.py`` registered: what a user's own launcher script looks like."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import toy_method  # noqa: E402, F401  (registers the family and the task)

from longclip.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
