"""``python -m colorjob.batch``: the same as ``colorjob batch``."""

import sys

from colorjob.batch import main

sys.exit(main())
