"""Ray job entrypoint: hyper-parameter search. See ``python jobs/tune.py --help``.

ray job submit --working-dir . -- python jobs/tune.py --config configs/tune.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir

from colorjob.tune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
