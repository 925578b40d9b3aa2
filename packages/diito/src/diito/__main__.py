import sys

from diito.cli import main

sys.exit(main())
