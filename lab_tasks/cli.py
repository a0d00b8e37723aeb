"""`lab`: the opslab command line. Thin: parse, call, print. Never imports torch."""
from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

import click
import yaml

from lab_tasks.commands import App
from lab_tasks.errors import LabError

# Commands are registered explicitly, in this order (hatch style; no filename scanning).
CORE_COMMANDS = ("list", "show", "start", "check", "hint", "solve", "reset", "progress")
# Other helpers own these modules; a missing one becomes a clear error, not a crash.
OPTIONAL_COMMANDS = ("sandbox", "drill", "bench")
_state = {"debug": False}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-i", "--inventory", type=click.Path(path_type=Path),
              help="Ansible inventory (default: $OPSLAB_INVENTORY, else ansible.cfg's).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, inventory: Path | None, debug: bool) -> None:
    """opslab: staged Linux labs with read-only self-checks, and the sandbox they run in."""
    _state["debug"] = debug
    ctx.obj = App(inventory_option=inventory)


def _module_command(name: str, module) -> click.Command:
    return getattr(module, "command", None) or getattr(module, name)


def _missing_command(name: str) -> click.Command:
    """A stand-in that explains which module is missing."""
    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   add_help_option=False, help=f"(not installed: lab_tasks/commands/{name}.py is missing)")
    def command() -> None:
        raise LabError(f"`lab {name}` is not available: lab_tasks/commands/{name}.py is missing; "
                       "update your checkout")
    return command


def _register(name: str, optional: bool) -> None:
    module_name = f"lab_tasks.commands.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not optional or exc.name != module_name:
            raise
        cli.add_command(_missing_command(name))
        return
    cli.add_command(_module_command(name, module), name)


for _name in CORE_COMMANDS:
    _register(_name, optional=False)
for _name in OPTIONAL_COMMANDS:
    _register(_name, optional=True)


def _as_lab_error(exc: Exception) -> LabError | None:
    """Known failure kinds that deserve one line, not a traceback."""
    if isinstance(exc, yaml.YAMLError):
        return LabError(f"invalid YAML: {' '.join(str(exc).split())}; fix the file")
    if isinstance(exc, PermissionError):
        return LabError(f"permission denied: {exc.filename}; run as a user who may read it")
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point: one `Error: ...` line per failure, tracebacks only with --debug."""
    try:
        code = cli.main(args=argv, prog_name="lab", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        code = 130
    except click.ClickException as exc:
        _show_traceback()
        exc.show()
        code = exc.exit_code
    except Exception as exc:  # the last line of defence: one line unless --debug
        _show_traceback()
        mapped = _as_lab_error(exc)
        if mapped is None:
            mapped = click.ClickException(f"internal error: {type(exc).__name__}: {exc}; "
                                          "rerun with --debug and report it")
        mapped.show()
        code = mapped.exit_code
    sys.exit(code if isinstance(code, int) else 0)


def _show_traceback() -> None:
    if _state["debug"]:
        traceback.print_exc()
