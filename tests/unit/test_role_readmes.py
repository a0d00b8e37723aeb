"""Role READMEs: their variable docs are generated from meta/argument_specs.yml and must be current,
and every role a role's tasks include is declared under the README's Dependencies."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen-role-readmes.py"
_spec = importlib.util.spec_from_file_location("gen_role_readmes", SCRIPT)
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

ALL_ROLES = sorted(path for path in (ROOT / "roles").iterdir() if (path / "tasks").is_dir())
DOCUMENTED = gen.documented_roles()


def test_role_readmes_are_current():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_role_has_an_argument_spec_and_so_a_generated_readme():
    assert [role.name for role in DOCUMENTED] == [role.name for role in ALL_ROLES]


@pytest.mark.parametrize("role", DOCUMENTED, ids=lambda role: role.name)
def test_readme_documents_every_variable_of_the_spec(role):
    readme = (role / "README.md").read_text()
    block = readme.split(gen.START, 1)[1].split(gen.END, 1)[0]
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    for entry, spec in specs.items():
        for name in spec.get("options") or {}:
            assert f"- `{name}` (" in block, f"{role.name}: {name} ({entry}) is not in README.md"


def declared_dependencies(role: Path) -> set[str]:
    """Role names that start a bullet of the README's Dependencies section."""
    readme = (role / "README.md").read_text() if (role / "README.md").exists() else ""
    section = re.search(r"^## Dependencies\s*$(.*?)(?=^## |\Z)", readme, re.M | re.S)
    return set(re.findall(r"^- `([\w.]+)`", section.group(1), re.M)) if section else set()


@pytest.mark.parametrize("role", ALL_ROLES, ids=lambda role: role.name)
def test_every_cross_role_include_is_declared(role):
    used = gen.role_includes(role)
    assert not [name for name in used if "{{" in name], f"{role.name} includes a role chosen at run time: {used}"
    missing = {name: sorted(paths) for name, paths in used.items() if name not in declared_dependencies(role)}
    assert missing == {}, f"declare these under ## Dependencies in roles/{role.name}/README.md"
    assert all((ROOT / "roles" / name).is_dir() for name in used), used


@pytest.mark.parametrize("role", ALL_ROLES, ids=lambda role: role.name)
def test_declared_dependencies_are_roles_in_use(role):
    assert declared_dependencies(role) <= set(gen.role_includes(role))


def test_stage6_declares_the_stage5_load_balancer():
    assert {"stage5_nginx", "keepalived"} <= declared_dependencies(ROOT / "roles" / "stage6_keepalived")


ARGUMENT_SPECS = """
argument_specs:
  main:
    short_description: Do the thing
    options:
      demo_port:
        type: int
        description: Port it listens on.
      demo_mode:
        type: str
        choices: [fast, safe]
        description: How it runs.
      demo_items:
        type: list
        elements: dict
        description: The things.
        options:
          name: {type: str, required: true, description: Item name.}
"""


@pytest.fixture
def demo_role(tmp_path):
    role = tmp_path / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "defaults").mkdir()
    (role / "tasks").mkdir()
    (role / "meta" / "argument_specs.yml").write_text(ARGUMENT_SPECS)
    (role / "meta" / "main.yml").write_text("galaxy_info: {description: A demo role, license: MIT}\n")
    (role / "defaults" / "main.yml").write_text("demo_port: 8080\ndemo_mode: safe\ndemo_items: []\n")
    (role / "tasks" / "main.yml").write_text(
        "- name: Use nginx\n  ansible.builtin.include_role:\n    name: nginx\n")
    return role


def test_a_new_readme_has_the_usual_layout_and_declares_what_it_includes(demo_role):
    readme = gen.render(demo_role, None)
    headings = re.findall(r"^## (.+)$", readme, re.M)
    assert headings == ["Requirements", "Role Variables", "Dependencies", "Example Playbook", "License"]
    assert "- `demo_port` (int, default `8080`): Port it listens on." in readme
    assert "- `demo_mode` (str, default `safe`, one of `fast`, `safe`): How it runs." in readme
    assert "  - `name` (str, required): Item name." in readme
    assert "- `nginx`: included by `tasks/main.yml`." in readme


def test_hand_written_text_survives_and_a_changed_spec_changes_the_block(demo_role):
    hand = ("# demo\n\nWhy this role exists.\n\n## Role Variables\n\n" + gen.START + "\nold\n" + gen.END
            + "\n\nA note on ports.\n\n## Dependencies\n\n- `nginx`: for the front.\n")
    first = gen.render(demo_role, hand)
    assert first.startswith("# demo\n\nWhy this role exists.\n") and "A note on ports." in first
    assert "- `nginx`: for the front." in first and "\nold\n" not in first
    assert gen.render(demo_role, first) == first
    spec = demo_role / "meta" / "argument_specs.yml"
    spec.write_text(spec.read_text().replace("Port it listens on.", "Port it answers on."))
    assert "Port it answers on." in gen.render(demo_role, first)


def test_a_readme_without_markers_gets_the_block_under_its_role_variables_heading(demo_role):
    readme = gen.render(demo_role, "# demo\n\n## Role Variables\n\nOld prose.\n\n## License\n\nMIT\n")
    assert readme.index(gen.START) < readme.index("Old prose.") < readme.index("## License")
