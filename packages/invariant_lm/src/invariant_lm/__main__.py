import sys

from invariant_lm.cli import main

sys.exit(main())
