"""`python -m app.cli`: the `chan` command."""

import sys

from app.cli import main

sys.exit(main())
