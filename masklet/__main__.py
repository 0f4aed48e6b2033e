import sys

from masklet.cli import main

sys.exit(main())
