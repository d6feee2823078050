"""``python -m lhama.server [flags]`` = ``lhama serve [flags]``."""

import sys

from lhama.server.cli import main

sys.exit(main())
