"""The README's stage list is generated from the registry and must be current."""
import subprocess
import sys
from pathlib import Path

from lab_tasks.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen-readme-stages.py"


def test_readme_stage_list_is_current():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_readme_lists_every_registry_stage():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- stages:start -->", 1)[1].split("<!-- stages:end -->", 1)[0]
    for stage in load_registry().stages:
        assert f"`{stage.id}` / `{stage.slug}`" in block
