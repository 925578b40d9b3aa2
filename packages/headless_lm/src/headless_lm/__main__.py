import sys

from headless_lm.cli import main

sys.exit(main())
