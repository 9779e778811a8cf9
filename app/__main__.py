"""``python -m glimpse.app`` is ``glimpse``: the same function (glimpse.app.launcher.main), for a checkout without the
entry point."""

import sys

from glimpse.app.launcher import main

sys.exit(main())
