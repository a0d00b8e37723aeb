"""Checks for stage 7: MariaDB secure install, backups, scratch restore and GTID replication.

The stage's first host is the primary, its second the replica. Every probe is read-only: SELECT,
SHOW, CHECKSUM TABLE over the root unix socket, and file reads. Paths and names come from the
role's defaults (`lab.vars`), the one place the role and the checks share.
"""
import re
import shlex

from lab_tasks.checks import Lab, Verdict, expect

GRANT_LINE = re.compile(r"^GRANT (?P<privs>.+?) ON (?P<target>\S+) TO ")
STATUS_LINE = re.compile(r"^\s*(?P<key>\w+): ?(?P<value>.*)$")
# mariabackup 10.11 writes log-applied after --prepare (xtrabackup and older versions: full-prepared).
PREPARED = ("backup_type = log-applied", "backup_type = full-prepared")


def parse_grants(lines: list[str]) -> dict[str, set[str]]:
    """`SHOW GRANTS` lines -> {'`shop`.*': {'SELECT', 'INSERT'}, '*.*': {'USAGE'}}."""
    grants: dict[str, set[str]] = {}
    for line in lines:
        match = GRANT_LINE.match(line)
        if match:
            privs = {p.strip().upper() for p in match["privs"].split(",")}
            grants.setdefault(match["target"], set()).update(privs)
    return grants


def parse_vertical(text: str) -> dict[str, str]:
    r"""`SHOW SLAVE STATUS\G` output -> {'Slave_IO_Running': 'Yes', ...}."""
    fields = {}
    for line in text.splitlines():
        match = STATUS_LINE.match(line)
        if match:
            fields[match["key"]] = match["value"].strip()
    return fields


def replica_problems(status: dict[str, str], primary_address: str) -> list[str]:
    """What keeps a `SHOW SLAVE STATUS` from describing a healthy GTID replica of the primary."""
    wanted = {"Master_Host": primary_address, "Slave_IO_Running": "Yes", "Slave_SQL_Running": "Yes",
              "Using_Gtid": "Slave_Pos", "Seconds_Behind_Master": "0"}
    if not status:
        return ["SHOW SLAVE STATUS is empty (not a replica)"]
    return [f"{key}={status.get(key, 'missing')}" for key, value in wanted.items() if status.get(key) != value]


def sql(host, query: str, socket: str | None = None) -> list[list[str]]:
    """Rows of a read-only query run as root over the unix socket (tab-separated batch output)."""
    option = f" --socket={shlex.quote(socket)}" if socket else ""
    result = host.run(f"mariadb --batch --skip-column-names{option} -e {shlex.quote(query)}")
    if result.rc != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise RuntimeError(f"mariadb: {lines[-1]}")
    return [line.split("\t") for line in result.stdout.splitlines()]


def _sql_or_error(host, query: str, socket: str | None = None) -> tuple[list[list[str]], str]:
    """Rows and '' on success; [] and the error text when the server refuses or is down."""
    try:
        return sql(host, query, socket), ""
    except RuntimeError as error:
        return [], str(error)


def _primary(lab: Lab):
    return lab.host(lab.hosts()[0])


def _replica(lab: Lab):
    return lab.host(lab.hosts()[1])


def _checksums(host, tables: list[str], socket: str | None = None) -> dict[str, str]:
    """{'shop.orders': '12345', ...} from CHECKSUM TABLE (empty when the server cannot be queried)."""
    rows, _ = _sql_or_error(host, f"CHECKSUM TABLE {', '.join(tables)}", socket)
    return {row[0]: row[1] for row in rows}


def secure_install(lab: Lab) -> Verdict:
    """No anonymous users, root only from localhost, no `test` database."""
    host = _primary(lab)
    accounts = sql(host, "SELECT CONCAT(QUOTE(User), '@', QUOTE(Host)) FROM mysql.user "
                         "WHERE User = '' OR (User = 'root' AND Host <> 'localhost')")
    databases = sql(host, "SHOW DATABASES LIKE 'test'")
    offenders = [row[0] for row in accounts] + [f"database {row[0]}" for row in databases]
    return expect(not offenders, expected="no anonymous users, root only @'localhost', no test database",
                  found=", ".join(offenders) or "none of them")


def _app_grant_problem(lab: Lab) -> str:
    """'' when the app user holds exactly the stage's privileges on the shop database."""
    v = lab.vars
    rows, error = _sql_or_error(_primary(lab), f"SHOW GRANTS FOR '{v['stage7_mariadb_app_user']}'@'localhost'")
    if error:
        return error
    wanted_privs = set(v["stage7_mariadb_app_privileges"].upper().split(","))
    wanted = {"*.*": {"USAGE"}, f"`{v['stage7_mariadb_database']}`.*": wanted_privs}
    found = parse_grants([row[0] for row in rows])
    return "" if found == wanted else f"grants {sorted((k, sorted(p)) for k, p in found.items())}"


def _password_file_problem(lab: Lab) -> str:
    """'' when the password file exists, belongs to root and is mode 0600."""
    v = lab.vars
    path = f"{v['stage7_mariadb_secrets_dir']}/mariadb-{v['stage7_mariadb_app_user']}.pw"
    f = _primary(lab).file(path)
    if not f.exists:
        return f"{path} missing"
    if (f.user, f.mode) != ("root", 0o600):
        return f"{path} is {f.mode:04o} {f.user}"
    return ""


def _app_login_problem(lab: Lab) -> str:
    """'' when the app user logs in with the password from its file and reads the orders."""
    v = lab.vars
    path = f"{v['stage7_mariadb_secrets_dir']}/mariadb-{v['stage7_mariadb_app_user']}.pw"
    query = f"SELECT COUNT(*) FROM {v['stage7_mariadb_database']}.orders"
    result = _primary(lab).run(
        f"MYSQL_PWD=\"$(cat {shlex.quote(path)})\" mariadb --batch --skip-column-names "
        f"-u {shlex.quote(v['stage7_mariadb_app_user'])} -e {shlex.quote(query)}")
    if result.rc != 0:
        return f"login as {v['stage7_mariadb_app_user']} failed: {result.stderr.strip()}"
    return "" if result.stdout.strip() == str(v["stage7_mariadb_orders"]) else f"orders={result.stdout.strip()}"


def app_user(lab: Lab) -> Verdict:
    """The app user holds only its privileges, its password lives in a root-only file, and it logs in."""
    v = lab.vars
    problems = [p for p in (_app_grant_problem(lab), _password_file_problem(lab), _app_login_problem(lab)) if p]
    return expect(not problems,
                  expected=f"{v['stage7_mariadb_app_user']}@localhost with only {v['stage7_mariadb_app_privileges']} "
                           f"on {v['stage7_mariadb_database']}.*, a 0600 root password file, a working login",
                  found="; ".join(problems) or "all of that")


def _dump_files(lab: Lab) -> list[str]:
    """The dated dumps in the backup directory, newest first (names sort by date)."""
    v = lab.vars
    result = _primary(lab).run(
        f"find {shlex.quote(v['stage7_mariadb_logical_dir'])} -maxdepth 1 -type f "
        f"-name '{v['stage7_mariadb_database']}-[0-9]*.sql.gz'")
    return sorted(result.stdout.split(), reverse=True)


def _dump_problem(host, path: str) -> str:
    """'' when a gzip dump is intact, complete and holds the orders table."""
    if host.run(f"gzip -t {shlex.quote(path)}").rc != 0:
        return f"{path} is not valid gzip"
    tail = host.run(f"zcat {shlex.quote(path)} | tail -n 1").stdout.strip()
    if "Dump completed" not in tail:
        return f"{path} is incomplete (last line: {tail[:60]!r})"
    if host.run(f"zgrep -q 'CREATE TABLE `orders`' {shlex.quote(path)}").rc != 0:
        return f"{path} has no orders table"
    return ""


def _dump_script_problem(lab: Lab) -> str:
    """'' when the dump script exists, is executable and takes a consistent snapshot."""
    script = _primary(lab).file(lab.vars["stage7_mariadb_dump_script"])
    if not script.exists or not script.mode & 0o100:
        return f"{script.path} missing or not executable"
    return "" if "--single-transaction" in script.content_string else f"{script.path} lacks --single-transaction"


def logical_backup(lab: Lab) -> Verdict:
    """A dump script; 1..keep dated gzip dumps; the newest is complete (so rotation removed the stale ones)."""
    keep = lab.vars["stage7_mariadb_keep"]
    files = _dump_files(lab)
    problems = [_dump_script_problem(lab)]
    if not 1 <= len(files) <= keep:
        problems.append(f"{len(files)} dated dumps")
    if files:
        problems.append(_dump_problem(_primary(lab), files[0]))
    problems = [p for p in problems if p]
    return expect(not problems, expected=f"an executable dump script and 1..{keep} dumps, the newest complete",
                  found="; ".join(problems) or f"{len(files)} dumps, newest {files[0]}")


def physical_backup(lab: Lab) -> Verdict:
    """A mariabackup backup that has been prepared (--prepare applied the redo log)."""
    path = f"{lab.vars['stage7_mariadb_physical_dir']}/xtrabackup_checkpoints"
    f = _primary(lab).file(path)
    state = "missing" if not f.exists else next(
        (line for line in f.content_string.splitlines() if line.startswith("backup_type")), "no backup_type")
    return expect(state in PREPARED, expected=f"{path} says {PREPARED[0]!r}", found=state)


def scratch_restore(lab: Lab) -> Verdict:
    """A second server on its own datadir and socket holds tables whose checksums equal the source's."""
    v = lab.vars
    host, socket, db = _primary(lab), v["stage7_mariadb_scratch_socket"], v["stage7_mariadb_database"]
    tables = [f"{db}.{row[0]}" for row in sql(
        host, f"SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}' ORDER BY 1")]
    datadirs, error = _sql_or_error(host, "SELECT @@datadir", socket)
    if error:
        return expect(False, expected=f"a scratch server answering on {socket}", found=error)
    source, restored = _checksums(host, tables), _checksums(host, tables, socket)
    same_dir = datadirs[0][0] == sql(host, "SELECT @@datadir")[0][0]
    return expect(tables and source == restored and not same_dir,
                  expected=f"a separate datadir and equal CHECKSUM TABLE for {', '.join(tables) or 'the shop tables'}",
                  found=f"datadir {datadirs[0][0]}, source {source}, scratch {restored}")


def server_problems(primary: dict[str, str], replica: dict[str, str]) -> list[str]:
    """What is wrong with the servers' own settings: binlog on the primary, read_only replica, distinct ids."""
    problems = []
    if primary["log_bin"] != "1":
        problems.append(f"primary log_bin={primary['log_bin']}")
    if replica["read_only"] != "1":
        problems.append(f"replica read_only={replica['read_only']}")
    if primary["server_id"] == replica["server_id"]:
        problems.append(f"both server_id={primary['server_id']}")
    return problems


def _variables(host) -> dict[str, str]:
    (server_id, log_bin, read_only), = sql(host, "SELECT @@server_id, @@log_bin, @@read_only")
    return {"server_id": server_id, "log_bin": log_bin, "read_only": read_only}


def replication(lab: Lab) -> Verdict:
    """The replica follows the primary by GTID: both threads running, no lag, read_only, distinct ids."""
    primary, replica = _primary(lab), _replica(lab)
    status = parse_vertical(replica.run("mariadb -e 'SHOW SLAVE STATUS\\G'").stdout)
    problems = replica_problems(status, lab.address(lab.hosts()[0]))
    problems += server_problems(_variables(primary), _variables(replica))
    return expect(not problems, expected="IO and SQL threads Yes, Using_Gtid Slave_Pos, 0 s behind, "
                                         "primary log_bin=1, replica read_only=1, distinct server_ids",
                  found="; ".join(problems) or "all of that")


def canary(lab: Lab) -> Verdict:
    """The newest canary row written on the primary reads back identically on the replica."""
    table = lab.vars["stage7_mariadb_canary_table"]
    query = f"SELECT id, note, written_at FROM {table} ORDER BY id DESC LIMIT 1"
    on_primary, error = _sql_or_error(_primary(lab), query)
    on_replica, replica_error = _sql_or_error(_replica(lab), query)
    return expect(on_primary and on_primary == on_replica,
                  expected=f"a row in {table} on the primary, the same newest row on the replica",
                  found=f"primary {on_primary or error or 'no rows'}; replica {on_replica or replica_error or 'no rows'}")
