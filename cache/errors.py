"""The one exception family every omniart package raises for bad input, and its CLI translation."""
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
            return command(*args, **kwargs)
        except OmniError as error:
            raise click.ClickException(str(error)) from error

    return wrapper
