"""`python -m scylla.fit` = `scylla-fit`."""

import sys

from .cli import main

sys.exit(main())
