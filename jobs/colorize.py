"""Ray job entrypoint: batch colorization, the same as ``colorjob batch``.

    ray job submit --working-dir . -- python jobs/colorize.py --input s3://bucket/sketches \
        --conditions configs/grid.csv --model s3://bucket/models/best --output s3://bucket/out
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir

from colorjob.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["batch", *sys.argv[1:]]))
