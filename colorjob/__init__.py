"""colorjob: conditional sketch colorization — train, tune and batch-render on Ray."""

__version__ = "0.3.0"
