"""`python -m biograd ...` runs the command line, as `biograd ...` does."""

import sys

from biograd.cli import main

sys.exit(main())
