"""The one error type the CLI shows to people: one line, exit code 2, no traceback."""
import click


class LabError(click.ClickException):
    """Bad input or an unusable lab: printed as `Error: <problem>; <fix>`, exit 2."""

    exit_code = 2
