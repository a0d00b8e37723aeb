"""Stage 1 checks against a planted copy of the exercise in a temp dir, through testinfra's local backend."""
import os
import shutil
import subprocess

import pytest
import testinfra
import yaml

from lab_tasks.checks import Lab
from lab_tasks.registry import PROJECT_ROOT, load_registry
from lab_tasks.check_runner import run_stage

ROLE = PROJECT_ROOT / "roles" / "stage1_shell"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
STAGE = load_registry().resolve("stage1")
GREP = r"""grep -E '^[0-9]{1,3}(\.[0-9]{1,3}){3} [^"]*"[^"]*" 404 '"""


def tmp_vars(root):
    """The role defaults with every absolute path moved under `root`."""
    def move(value):
        if isinstance(value, str) and value.startswith("/"):
            return f"{root}{value}"
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value
    return {k: move(v) for k, v in DEFAULTS.items()}


def plant(v):
    """What prepare.yml does, in Python."""
    os.makedirs(v["stage1_shell_answers_dir"])
    shutil.copytree(ROLE / "files" / "drop", v["stage1_shell_drop_dir"])
    os.makedirs(v["stage1_shell_reports_dir"])
    for name in v["stage1_shell_report_files"]:
        open(f"{v['stage1_shell_reports_dir']}/{name}", "w").close()
    app = v["stage1_shell_app_dir"]
    for release in v["stage1_shell_app_releases"]:
        os.makedirs(f"{app}/releases/{release}")
    os.symlink(f"releases/{v['stage1_shell_app_initial_release']}", f"{app}/current")
    for item in v["stage1_shell_data_files"]:
        path = f"{v['stage1_shell_data_dir']}/{item['path']}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        subprocess.run(["truncate", "-s", item["size"], path], check=True)
        if "mtime" in item:
            subprocess.run(["touch", "-m", "-t", item["mtime"], path], check=True)
    os.makedirs(os.path.dirname(v["stage1_shell_access_log"]))
    shutil.copy(ROLE / "files" / "access.log", v["stage1_shell_access_log"])
    os.makedirs(os.path.dirname(v["stage1_shell_redirect_program"]))
    shutil.copy(ROLE / "files" / "lab-inventory", v["stage1_shell_redirect_program"])
    shutil.copytree(ROLE / "files" / "project", v["stage1_shell_project_dir"])


def learner_solution(v, root):
    """What a learner types, as shell commands (not the role's solve.yml)."""
    places = v["stage1_shell_fhs_places"]
    answers = v["stage1_shell_answers_dir"]
    moves = " && ".join(f"mkdir -p $(dirname {dst}) && mv {v['stage1_shell_drop_dir']}/{src} {dst}"
                        for src, dst in places.items())
    script = f"""set -e
        {moves}
        cd {v['stage1_shell_reports_dir']} && rm report-202[0-3]-[0-9][0-9].csv
        ln -sfn releases/v2 {v['stage1_shell_app_dir']}/current
        find {v['stage1_shell_data_dir']} -type f -size +1M -mtime +30 > {answers}/stale-big.txt
        {GREP} {v['stage1_shell_access_log']} > {answers}/404.txt
        {v['stage1_shell_redirect_program']} > {answers}/inventory.out 2> {answers}/inventory.err
        tar -czf {answers}/project.tar.gz -C {root}/srv --exclude=project/tmp project
    """
    subprocess.run(["bash", "-c", script], check=True)


@pytest.fixture
def lab(tmp_path):
    v = tmp_vars(tmp_path)
    plant(v)
    lab = Lab(STAGE, local=True, connect=lambda name: testinfra.get_host("local://"))
    lab.__dict__["vars"] = v
    return lab


def results(lab):
    return {r.task_id: r for r in run_stage(STAGE, lab).results}


def snapshot(root):
    return sorted((str(p), p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*"))


def test_planted_exercise_fails_every_task_with_its_hint(lab):
    found = results(lab)
    assert [t for t, r in found.items() if r.passed] == []
    assert all(r.hint == STAGE.task(t).hint and r.evidence.startswith("expected") for t, r in found.items())


def test_learner_solution_passes_every_task(lab, tmp_path):
    learner_solution(lab.vars, tmp_path)
    found = results(lab)
    assert {t: r.evidence for t, r in found.items() if not r.passed} == {}


def test_checks_change_nothing(lab, tmp_path):
    before = snapshot(tmp_path)
    results(lab)
    assert snapshot(tmp_path) == before


def test_a_too_broad_glob_deletes_the_decoys(lab):
    subprocess.run(["bash", "-c", f"cd {lab.vars['stage1_shell_reports_dir']} && rm report-202[0-3]-*.csv"],
                   check=True)
    verdict = results(lab)["glob"]
    assert not verdict.passed and "report-2023-Q1.csv" in verdict.evidence


def test_ln_without_n_creates_the_link_inside_the_old_release(lab):
    subprocess.run(["ln", "-sf", "releases/v2", f"{lab.vars['stage1_shell_app_dir']}/current"], check=True)
    verdict = results(lab)["symlink"]
    assert not verdict.passed and verdict.evidence.endswith("releases/v1")


def test_a_naive_grep_is_not_identical(lab):
    answers = lab.vars["stage1_shell_answers_dir"]
    subprocess.run(["bash", "-c", f"grep ' 404 ' {lab.vars['stage1_shell_access_log']} > {answers}/404.txt"],
                   check=True)
    assert not results(lab)["grep"].passed


def test_merged_streams_fail_redirect(lab):
    answers, program = lab.vars["stage1_shell_answers_dir"], lab.vars["stage1_shell_redirect_program"]
    subprocess.run(["bash", "-c", f"{program} > {answers}/inventory.out 2>&1; : > {answers}/inventory.err"],
                   check=True)
    assert not results(lab)["redirect"].passed


def test_archive_with_the_scratch_dir_fails(lab, tmp_path):
    answers = lab.vars["stage1_shell_answers_dir"]
    subprocess.run(["tar", "-czf", f"{answers}/project.tar.gz", "-C", f"{tmp_path}/srv", "project"], check=True)
    verdict = results(lab)["archive"]
    assert not verdict.passed and "project/tmp/build.log" in verdict.evidence
