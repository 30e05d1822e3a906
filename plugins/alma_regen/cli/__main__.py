"""`python -m alma_regen.cli ...`: the `alma-regen` command without its console script."""
import sys

from . import main

sys.exit(main())
