"""The ``atst`` application, every command:

* ``atst prep build-masks | count-nuclei | filter-misaligned | train-nuclei | preview | verify |
  export-annotations`` (:mod:`.prep`, :mod:`.nuclei`, :mod:`.align`)
* ``atst data synth`` (:mod:`.data`)
* ``atst train`` (:mod:`.train`), ``atst check-targets`` (:mod:`.check`), ``atst eval`` (:mod:`.eval`),
  ``atst translate`` (:mod:`.translate`)
"""

from __future__ import annotations

import typer

from atst_prep import __version__

from . import align, check, data, nuclei, prep, train  # noqa: F401  (nuclei, align add prep commands)
from . import eval as eval_cli
from .translate import translate_command

app = typer.Typer(
    help="ATST toolkit: virtual IHC staining of H&E supervised by masks from the consecutive IHC section.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
app.add_typer(prep.app, name="prep")
app.add_typer(data.app, name="data")
app.command("train")(train.train)
app.command("check-targets")(check.check_targets)
app.command("eval")(eval_cli.eval_command)
app.command("translate")(translate_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"atst {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """ATST toolkit."""


if __name__ == "__main__":
    app()
