"""``python -m agent`` is the ``tbox`` command."""

import sys

from agent.cli import main

sys.exit(main())
