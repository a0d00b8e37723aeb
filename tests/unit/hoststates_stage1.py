"""Recorded host states of stage 1 (shell & filesystem): the exercise planted in a temp dir, read through
testinfra's local backend, solved the way a learner types it, and the near misses learners reach."""
from __future__ import annotations

import os
import shutil
import subprocess

import testinfra
import yaml

from hoststates import NearMiss, fake_lab
from lab_tasks.registry import PROJECT_ROOT

STAGE = "stage1"
ROLE = PROJECT_ROOT / "roles" / "stage1_shell"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
GREP = r"""grep -E '^[0-9]{1,3}(\.[0-9]{1,3}){3} [^"]*"[^"]*" 404 '"""


def tmp_vars(root):
    """The role defaults with every absolute path moved under `root` (the program keeps its place)."""
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
    bash(f"""set -e
        {moves}
        cd {v['stage1_shell_reports_dir']} && rm report-202[0-3]-[0-9][0-9].csv
        ln -sfn releases/v2 {v['stage1_shell_app_dir']}/current
        find {v['stage1_shell_data_dir']} -type f -size +1M -mtime +30 > {answers}/stale-big.txt
        {GREP} {v['stage1_shell_access_log']} > {answers}/404.txt
        {v['stage1_shell_redirect_program']} > {answers}/inventory.out 2> {answers}/inventory.err
        tar -czf {answers}/project.tar.gz -C {root}/srv --exclude=project/tmp project
    """)


def bash(script: str) -> None:
    subprocess.run(["bash", "-c", script], check=True)


def planted(tmp_path):
    """The exercise as `lab start stage1` leaves it, under tmp_path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    v = tmp_vars(tmp_path)
    plant(v)
    return fake_lab(STAGE, {"localhost": testinfra.get_host("local://")}, vars=v)


def solved(tmp_path):
    lab = planted(tmp_path)
    learner_solution(lab.vars, tmp_path)
    return lab


def _after(mistake):
    """The solved state, then `mistake(vars, root)` (shell text) run over it."""
    def build(tmp_path):
        lab = solved(tmp_path)
        bash("set -e\n" + mistake(lab.vars, tmp_path))
        return lab
    return build


def _answers(v) -> str:
    return v["stage1_shell_answers_dir"]


NEAR_MISSES = [
    NearMiss("fhs", "configuration under /usr/local/etc",
             _after(lambda v, r: f"mkdir -p {r}/usr/local/etc && mv {v['stage1_shell_fhs_places']['lab-tool.conf']} "
                                 f"{r}/usr/local/etc/"), "lab-tool.conf is not where the FHS puts it"),
    NearMiss("fhs", "copied, not moved",
             _after(lambda v, r: f"cp {ROLE}/files/drop/lab-tool.log {v['stage1_shell_drop_dir']}/"),
             "still in the drop dir: lab-tool.log"),
    NearMiss("fhs", "program lost its x bit",
             _after(lambda v, r: f"chmod 644 {v['stage1_shell_fhs_places']['lab-tool']}"), "lab-tool is no longer executable"),
    NearMiss("fhs", "man page in man/ instead of man1/",
             _after(lambda v, r: f"mv {v['stage1_shell_fhs_places']['lab-tool.1']} {r}/usr/local/share/man/"),
             "lab-tool.1 is not where the FHS puts it"),
    NearMiss("glob", "too broad: the quarterly report goes too",
             _after(lambda v, r: f"rm {v['stage1_shell_reports_dir']}/report-2023-Q1.csv"),
             "wrongly deleted: report-2023-Q1.csv"),
    NearMiss("glob", "too narrow: 2023 left",
             _after(lambda v, r: f"touch {v['stage1_shell_reports_dir']}/report-2023-01.csv"),
             "should be gone: report-2023-01.csv"),
    NearMiss("symlink", "ln without -n",
             _after(lambda v, r: f"ln -sfn releases/v1 {v['stage1_shell_app_dir']}/current && "
                                 f"ln -sf releases/v2 {v['stage1_shell_app_dir']}/current"),
             ("points to", "a release changed")),
    NearMiss("symlink", "release copied over the link",
             _after(lambda v, r: f"cd {v['stage1_shell_app_dir']} && rm current && cp -r releases/v2 current"),
             "no longer a symbolic link"),
    NearMiss("symlink", "pointed at v3",
             _after(lambda v, r: f"ln -sfn releases/v3 {v['stage1_shell_app_dir']}/current"), "points to"),
    NearMiss("find", "relative paths",
             _after(lambda v, r: f"cd {v['stage1_shell_data_dir']} && find . -type f -size +1M -mtime +30 "
                                 f"> {_answers(v)}/stale-big.txt"), "the paths are not absolute"),
    NearMiss("find", "size test forgotten",
             _after(lambda v, r: f"find {v['stage1_shell_data_dir']} -type f -mtime +30 > {_answers(v)}/stale-big.txt"),
             "is listed but is not both larger than 1 MiB and older than 30 days"),
    NearMiss("find", "-mtime -30 (the recent ones)",
             _after(lambda v, r: f"find {v['stage1_shell_data_dir']} -type f -size +1M -mtime -30 "
                                 f"> {_answers(v)}/stale-big.txt"), "files that qualify are missing"),
    NearMiss("grep", "a plain ' 404 '",
             _after(lambda v, r: f"grep ' 404 ' {v['stage1_shell_access_log']} > {_answers(v)}/404.txt"),
             "status is not 404"),
    NearMiss("grep", "IPv6 clients kept",
             _after(lambda v, r: f"grep -E '\" 404 ' {v['stage1_shell_access_log']} > {_answers(v)}/404.txt"),
             "client is not an IPv4 address"),
    NearMiss("grep", "only the addresses written",
             _after(lambda v, r: f"{GREP} {v['stage1_shell_access_log']} | cut -d' ' -f1 > {_answers(v)}/404.txt"),
             "not lines of the log"),
    NearMiss("redirect", "both streams in one file",
             _after(lambda v, r: f"{v['stage1_shell_redirect_program']} > {_answers(v)}/inventory.out 2>&1; "
                                 f": > {_answers(v)}/inventory.err"),
             "inventory.out is not exactly the program's stdout (both streams mixed in it)"),
    NearMiss("redirect", "streams swapped",
             _after(lambda v, r: f"{v['stage1_shell_redirect_program']} 2> {_answers(v)}/inventory.out "
                                 f"> {_answers(v)}/inventory.err"),
             "inventory.out holds the program's stderr"),
    NearMiss("archive", "scratch dir included",
             _after(lambda v, r: f"tar -czf {_answers(v)}/project.tar.gz -C {r}/srv project"),
             "unexpected members: project/tmp/build.log"),
    NearMiss("archive", "absolute paths",
             _after(lambda v, r: f"tar -czf {_answers(v)}/project.tar.gz --exclude=project/tmp "
                                 f"{v['stage1_shell_project_dir']} 2>/dev/null"),
             "does not unpack to a project/ directory"),
    NearMiss("archive", "not compressed",
             _after(lambda v, r: f"tar -cf {_answers(v)}/project.tar.gz -C {r}/srv --exclude=project/tmp project"),
             "one tar cannot list"),
]
