"""The one exception family every omniart package raises for bad input, and its CLI translation."""
import contextlib
import functools

__all__ = ["OmniError", "cli_errors"]


class OmniError(Exception):
    """A problem with the user's input or environment; its message says what is wrong and how to fix it."""


def cli_errors(command):
    """Wrap a click command body so an OmniError becomes one clear line and exit code 1, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import click

        try:
            with _plain_warnings():
                return command(*args, **kwargs)
        except OmniError as error:
            raise click.ClickException(str(error)) from error

    return wrapper


@contextlib.contextmanager
def _plain_warnings():
    """A command's warnings as one line each, `warning: ...`, once per text: a user of the CLI wants the advice,
    not the source line of the library that gave it (restored afterwards: the caller's process state stays)."""
    import sys
    import warnings

    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text not in shown:
            shown.add(text)
            print(f"warning: {text}", file=file or sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield
