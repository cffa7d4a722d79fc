"""``python -m longclip.cli`` (what torchrun runs): the ``longclip`` command."""

import sys

from . import main

sys.exit(main())
