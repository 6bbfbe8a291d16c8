import sys

from rc2l.cli import main

sys.exit(main())
