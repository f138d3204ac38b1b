"""The ``autonorm`` command (also ``python -m autonorm``).

The command-line module imports torch and the plugins, which takes seconds; a Ctrl-C meanwhile ends
the command with exit code 130 and no traceback from inside an import, and a second one (a terminal's
Ctrl-C reaches the workers of ``--workers N`` and their parent passes it on) is ignored.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from autonorm.interrupts import interrupt_once


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGINT, interrupt_once)
    try:
        from autonorm.cli import main as run

        return run(argv)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
