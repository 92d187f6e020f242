"""Ray job entrypoint: hyper-parameter search, the same as ``colorjob tune``.

ray job submit --working-dir . -- python jobs/tune.py --config configs/tune.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir

from colorjob.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
