"""``python -m lhama.server [flags]`` = ``lhama serve [flags]``."""

import sys

from lhama.cli.serve import main

sys.exit(main())
