"""The ``atst`` command line (Typer). Commands stay thin: parse, call the library, report."""
