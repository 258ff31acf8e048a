"""`python -m extmem ...` (what torchrun launches: torchrun ... -m extmem train CONFIG)."""

import sys

from extmem.cli import main

sys.exit(main())
