"""A helper for CLI tests: run `attnbench.cli.main` in-process and capture what it printed."""

from attnbench.cli import main


def cli(capsys, *args):
    """(exit code, stdout, stderr) of `attnbench ARGS`."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err
