"""The application object every command gets through `ctx.obj`, and helpers the commands share."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from lab_tasks.registry import Registry, Stage, StageType, load_registry
from lab_tasks.topology import Inventory, default_inventory_path


@dataclass
class App:
    """Global options plus the registry and inventory, each loaded once when first needed."""

    inventory_option: Path | None = None
    _registry: Registry | None = field(default=None, repr=False)
    _inventory: Inventory | None = field(default=None, repr=False)

    @property
    def inventory_path(self) -> Path:
        """-i/--inventory, else $OPSLAB_INVENTORY, else ansible.cfg's inventory."""
        return self.inventory_option or default_inventory_path()

    @property
    def registry(self) -> Registry:
        """The stage registry."""
        if self._registry is None:
            self._registry = load_registry()
        return self._registry

    @property
    def inventory(self) -> Inventory:
        """The parsed inventory (LabError when missing or broken)."""
        if self._inventory is None:
            self._inventory = Inventory(self.inventory_path)
        return self._inventory


pass_app = click.make_pass_decorator(App)


def _set_inventory(ctx: click.Context, _param, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(App).inventory_option = value


inventory_option = click.option(
    "-i", "--inventory", type=click.Path(path_type=Path), expose_value=False, callback=_set_inventory,
    help="Ansible inventory (default: $OPSLAB_INVENTORY, else ansible.cfg's).")


def stage_heading(stage: Stage) -> str:
    """`stage1 (shell) · Shell & filesystem`."""
    return f"{stage.id} ({stage.slug}) · {stage.title}"


def run_playbook(app: App, stage: Stage, mode: str) -> None:
    """Run the stage's role in `mode` and print one recap line per host."""
    from lab_tasks.ansible import run_stage_playbook

    run = run_stage_playbook(stage, mode, app.inventory_path)
    for host, changed in sorted(run.changed.items()):
        click.echo(f"{stage.id} {mode}: {host} changed={changed}")


def playbook_command(name: str, mode: str, help_text: str, done: str) -> click.Command:
    """A `lab NAME STAGE` command that runs the stage role in `mode`, then prints `done`."""
    @click.command(name, help=help_text)
    @click.argument("stage", type=StageType())
    @inventory_option
    @pass_app
    def command(app: App, stage: Stage) -> None:
        run_playbook(app, stage, mode)
        click.echo(done.format(stage=stage.id))
    return command
