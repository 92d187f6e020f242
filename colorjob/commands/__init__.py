"""One module per ``colorjob`` subcommand: its parser (``build_parser(prog)``), its dispatch
(``command(args) -> exit status``) and, where it has one, its dry run. Nothing else: the work is
done by the library (``colorjob.train``, ``colorjob.tune``, ``colorjob.batch``, ...), which never
imports this package. :func:`colorjob.cli.main` parses, sets up logging and turns a
:class:`colorjob.errors.ColorjobError` into one ``error:`` line and exit status 2."""
