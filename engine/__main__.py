"""``python -m glimpse.engine``: the engine's command line alone (no window, no Qt), the half of ``glimpse`` that
app/launcher.py hands every engine command to. Glimpse's helper processes are started this way
(``engine.system.self_command``); people start Glimpse with ``glimpse``."""

import sys

from glimpse.engine.cli import main

sys.exit(main())
