"""``python -m lhama.cli`` (and ``torchrun -m lhama.cli``) = ``lhama``."""

import sys

from lhama.cli import main

sys.exit(main())
