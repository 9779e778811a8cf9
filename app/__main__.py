"""``python -m app`` opens the Glimpse window."""

import sys

from app import platform_check

# Before app.main imports QtGui, which links X and GL libraries that may be missing too.
problem = platform_check.prepare()
if problem:
    print(problem, file=sys.stderr)
    sys.exit(1)

from app.main import main  # noqa: E402

sys.exit(main())
