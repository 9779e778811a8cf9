"""``python -m app`` opens the Glimpse window."""

import sys

from app.main import main

sys.exit(main())
