"""``python -m camscope``."""

import sys

from camscope.cli import main

sys.exit(main())
