"""``python -m colorjob <command> ...``: the same as the ``colorjob`` command."""

import sys

from colorjob.cli import main

sys.exit(main())
