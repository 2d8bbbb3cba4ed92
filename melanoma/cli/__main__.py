"""`python -m melanoma.cli`: the same as the `melanoma` command."""

import sys

from melanoma.cli import main

sys.exit(main())
