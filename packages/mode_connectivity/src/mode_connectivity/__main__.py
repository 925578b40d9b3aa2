import sys

from mode_connectivity.cli import main

sys.exit(main())
