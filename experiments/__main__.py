"""`python -m experiments <stage> [args]`: one pipeline stage, through experiments.launch."""

import sys

from experiments.launch import main

sys.exit(main())
