"""`python -m melanoma_cli`: the same as the `melanoma` command."""

import sys

from melanoma_cli import main

sys.exit(main())
