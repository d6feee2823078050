"""Parse, run, and turn what can go wrong into exit codes: a user error is one line on stderr
(exit 2), Ctrl-C is 130, and a reader that goes away (``lhama generate ... | head``) ends the
command quietly, as it ends ``cat``."""

from __future__ import annotations

import os
import sys

from lhama.errors import LhamaError

EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141  # 141 = 128 + SIGPIPE, what a shell reports


def run_command(parser, argv: list[str]) -> int:
    a = parser.parse_args(argv)
    try:
        return a.func(a)
    except LhamaError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Python would flush stdout again at exit and report the same error: point it at
        # /dev/null first (the recipe of the signal module's documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
