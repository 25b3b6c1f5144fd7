import sys

from recallq.cli import main

sys.exit(main())
