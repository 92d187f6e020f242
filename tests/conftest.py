import pytest

from colorjob import synth


@pytest.fixture(scope="session")
def chars(tmp_path_factory):
    """A small synthetic dataset: 4 characters x 25 colourings at 32 px."""
    return synth.generate(tmp_path_factory.mktemp("chars"), sketches=4, seed=7, size=32, workers=1)
