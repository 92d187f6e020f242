"""The one base class of errors a user can fix: the command line prints them in one line, exit 2.

Every module's own error (``ConfigError``, ``DatasetError``, ``ModelError``, ``StorageError``,
``BatchError``, ``ConditionError``) derives from :class:`ColorjobError`, so ``colorjob <command>``
catches them in one place and never shows a traceback for bad input.
"""


class ColorjobError(Exception):
    """Bad input or setting; the message names the file, row or key and what to do."""
