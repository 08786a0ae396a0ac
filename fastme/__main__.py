import sys

from fastme.cli import main

sys.exit(main())
