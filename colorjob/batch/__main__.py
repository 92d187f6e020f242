"""``python -m colorjob.batch``: the same as ``colorjob batch``."""

import sys

from colorjob.cli import main

sys.exit(main(["batch", *sys.argv[1:]]))
