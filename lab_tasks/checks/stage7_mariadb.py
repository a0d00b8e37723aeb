"""Checks for stage 7: MariaDB secure install, backups, scratch restore and GTID replication.

The stage's first host is the primary, its second the replica. Every probe is read-only: SELECT,
SHOW, CHECKSUM TABLE over the root unix socket, and file reads. Paths and names come from the
role's defaults (`lab.vars`), the one place the role and the checks share.
"""
import re
import shlex

from lab_tasks.checks import Lab, Verdict, expect
from lab_tasks.checks.common import read, run

GRANT_LINE = re.compile(r"^GRANT (?P<privs>.+?) ON (?P<target>\S+) TO ")
STATUS_LINE = re.compile(r"^\s*(?P<key>\w+): ?(?P<value>.*)$")
# mariabackup 10.11 writes log-applied after --prepare (xtrabackup and older versions: full-prepared).
PREPARED = ("log-applied", "full-prepared")
# Files mariabackup --backup writes beside the data; a hand-made directory lacks them.
BACKUP_FILES = ("xtrabackup_checkpoints", "xtrabackup_info", "backup-my.cnf", "ibdata1")
TABLE_LOCKS = re.compile(r"(?:^|\s)(?:--lock-all-tables|-x)(?=\s|$)", re.M)  # -x turns --single-transaction off
ON = {"", "1", "on", "true"}


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
    option = [f"--socket={socket}"] if socket else []
    result = run(host, "mariadb", "--batch", "--skip-column-names", *option, "-e", query)
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
    rows, _ = _sql_or_error(host, f"CHECKSUM TABLE {', '.join(tables)}", socket) if tables else ([], "")
    return {row[0]: row[1] for row in rows}


def _tables(host, database: str) -> list[str]:
    """`db.table` of every base table of a database on a server."""
    rows, _ = _sql_or_error(host, "SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) FROM information_schema.TABLES "
                                  f"WHERE TABLE_SCHEMA = '{database}' AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1")
    return [row[0] for row in rows]


def parse_defaults(text: str) -> dict[str, str]:
    """`my_print_defaults --mysqld` output -> {option: value}, the last setting winning, `_` spelled `-`."""
    options = {}
    for line in text.splitlines():
        name, _, value = line.strip().removeprefix("--").partition("=")
        if name:
            options[name.replace("_", "-")] = value
    return options


def _persisted(host) -> dict[str, str]:
    """The server options the option files set (what survives a restart)."""
    return parse_defaults(run(host, "my_print_defaults", "--mysqld").stdout)


def secure_install(lab: Lab) -> Verdict:
    """No anonymous users, root only from localhost, no `test` database."""
    host = _primary(lab)
    accounts = sql(host, "SELECT User, Host FROM mysql.user WHERE User = '' OR (User = 'root' AND Host <> 'localhost')")
    databases = sql(host, "SHOW DATABASES LIKE 'test'")
    offenders = [f"an anonymous account from {h}" if not u else f"root may log in from {h}" for u, h in accounts]
    offenders += ["the test database is still there" for _ in databases]
    return expect(not offenders, expected="no anonymous accounts, root only from localhost, no test database",
                  found="; ".join(offenders) or "that")


def _app_grant_problems(lab: Lab) -> list[str]:
    """Why the app account is not exactly user@localhost with the stage's privileges on the shop database."""
    v = lab.vars
    user, db = v["stage7_mariadb_app_user"], v["stage7_mariadb_database"]
    accounts, error = _sql_or_error(_primary(lab), f"SELECT Host, authentication_string <> '' OR plugin NOT IN "
                                                   f"('', 'mysql_native_password') FROM mysql.user WHERE User = '{user}'")
    if error:
        return [error]
    hosts = {host: has_secret == "1" for host, has_secret in accounts}
    if "localhost" not in hosts:
        return [f"there is no account {user}@localhost" + (f" ({user} exists from {', '.join(hosts)})" if hosts else "")]
    problems = [f"{user} may also log in from {h}; the goal allows localhost only" for h in hosts if h != "localhost"]
    if not hosts["localhost"]:
        problems.append(f"{user}@localhost has no password")
    rows, error = _sql_or_error(_primary(lab), f"SHOW GRANTS FOR '{user}'@'localhost'")
    found = parse_grants([row[0] for row in rows])
    wanted_privs = set(v["stage7_mariadb_app_privileges"].upper().split(","))
    mine = found.pop(f"`{db}`.*", set())
    if found.get("*.*") == {"USAGE"}:  # every account has it: the right to log in
        del found["*.*"]
    if "ALL PRIVILEGES" in mine:
        problems.append(f"{user} holds every privilege on {db}")
    elif mine - wanted_privs:
        problems.append(f"{user} may also {', '.join(sorted(mine - wanted_privs))} on {db}")
    elif wanted_privs - mine:
        problems.append(f"{user} may not {', '.join(sorted(wanted_privs - mine))} on {db}")
    problems += [f"{user} holds {', '.join(sorted(p))} on {t}, beyond the {db} database" for t, p in found.items()]
    return problems


def _password_file_problem(lab: Lab) -> str:
    """'' when the password file exists, is not empty, belongs to root and is mode 0600."""
    v = lab.vars
    path = f"{v['stage7_mariadb_secrets_dir']}/mariadb-{v['stage7_mariadb_app_user']}.pw"
    f = _primary(lab).file(path)
    if not f.exists:
        return f"{path} is missing"
    if f.user != "root":
        return f"{path} belongs to {f.user}; the goal asks for root"
    if f.mode != 0o600:
        who = " and ".join(w for w, bits in (("its group", 0o070), ("others", 0o007)) if f.mode & bits)
        return f"{path} is open to {who or 'nobody but root, yet not read-write for root'}; the goal asks for mode 0600"
    if not (read(_primary(lab), path) or "").strip():
        return f"{path} is empty"
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
        return f"{v['stage7_mariadb_app_user']} cannot log in with the password from {path}"
    return "" if result.stdout.strip() == str(v["stage7_mariadb_orders"]) else \
        f"{v['stage7_mariadb_app_user']} reads {result.stdout.strip()} orders, not {v['stage7_mariadb_orders']}"


def app_user(lab: Lab) -> Verdict:
    """The app user holds only its privileges from localhost, its password lives in a root-only file, and it logs in."""
    v = lab.vars
    problems = _app_grant_problems(lab) + [p for p in (_password_file_problem(lab), _app_login_problem(lab)) if p]
    return expect(not problems,
                  expected=f"{v['stage7_mariadb_app_user']}@localhost with only {v['stage7_mariadb_app_privileges']} "
                           f"on {v['stage7_mariadb_database']}, its password in a root-only 0600 file, a working login",
                  found="; ".join(problems) or "that")


def _dump_files(lab: Lab) -> list[str]:
    """The dated dumps in the backup directory, newest first (names sort by date)."""
    v = lab.vars
    result = run(_primary(lab), "find", v["stage7_mariadb_logical_dir"], "-maxdepth", "1", "-type", "f",
                 "-name", f"{v['stage7_mariadb_database']}-[0-9]*.sql.gz")
    return sorted(result.stdout.split(), reverse=True)


def _dump_problem(host, path: str) -> str:
    """'' when a gzip dump is intact, complete and holds the orders table."""
    if run(host, "gzip", "-t", path).rc != 0:
        return f"the newest dump {path} is not valid gzip"
    tail = run(host, "sh", "-c", f"zcat {shlex.quote(path)} | tail -n 1").stdout.strip()
    if "Dump completed" not in tail:
        return f"the newest dump {path} stops before the end"
    if run(host, "zgrep", "-q", "CREATE TABLE `orders`", path).rc != 0:
        return f"the newest dump {path} has no orders table"
    return ""


def dump_script_problems(text: str | None, path: str) -> list[str]:
    """Why a dump script's text does not take one consistent snapshot without table locks (in words)."""
    if text is None:
        return [f"{path} is missing"]
    code = "\n".join(re.sub(r"(^|\s)#.*", "", line) for line in text.splitlines())
    dumps = [line for line in code.splitlines() if re.search(r"\b(mariadb-dump|mysqldump)\b", line)]
    if not dumps:
        return [f"{path} runs no dump"]
    problems = []
    if "--single-transaction" not in code:
        problems.append(f"{path} dumps table by table, not from one consistent snapshot")
    if TABLE_LOCKS.search(code):
        problems.append(f"{path} locks the tables while it dumps; the goal asks for no table locks")
    return problems


def logical_backup(lab: Lab) -> Verdict:
    """A dump script run since its last change; 1..keep dated gzip dumps; the newest is complete."""
    v, host = lab.vars, _primary(lab)
    keep, path = v["stage7_mariadb_keep"], v["stage7_mariadb_dump_script"]
    script = host.file(path)
    problems = dump_script_problems(read(host, path), path)
    if script.exists and not script.mode & 0o100:
        problems.append(f"{path} is not executable")
    elif script.exists and run(host, "bash", "-n", path).rc != 0:
        problems.append(f"{path} has a syntax error")
    files = _dump_files(lab)
    if not files:
        problems.append("there are no dated dumps")
    elif len(files) > keep:
        problems.append(f"{len(files)} dated dumps are kept; the goal asks for the newest {keep}")
    if files:
        problems += [p for p in [_dump_problem(host, files[0])] if p]
        if script.exists and host.file(files[0]).mtime < script.mtime:
            problems.append(f"the newest dump is older than the last change to {path}: run it again")
    return expect(not problems, expected=f"{path} making consistent compressed dumps without table locks, run, "
                                         f"and 1 to {keep} dated dumps, the newest complete",
                  found="; ".join(problems) or "that")


def physical_backup_problems(host, directory: str, database: str, tables: list[str]) -> list[str]:
    """Why the directory does not hold a prepared mariabackup backup of the database (in words)."""
    checkpoints = read(host, f"{directory}/xtrabackup_checkpoints")
    if checkpoints is None:
        return [f"{directory} holds no mariabackup backup"]
    fields = dict(line.replace(" ", "").split("=", 1) for line in checkpoints.splitlines() if "=" in line)
    problems = []
    missing = [name for name in BACKUP_FILES if not host.file(f"{directory}/{name}").exists]
    lsn = fields.get("to_lsn", "")
    if missing or not lsn.isdigit() or lsn == "0":
        problems.append(f"{directory} does not look like mariabackup's work (no log positions or no "
                        f"{', '.join(missing) or 'data files'})")
    absent = [t for t in tables if not host.file(f"{directory}/{database}/{t.split('.', 1)[1]}.ibd").exists]
    if absent:
        problems.append(f"the backup lacks {', '.join(absent)}")
    if fields.get("backup_type") not in PREPARED:
        problems.append(f"the backup was taken but not prepared (its state is {fields.get('backup_type', 'unknown')}"
                        "), so a server could not start on it")
    return problems


def physical_backup(lab: Lab) -> Verdict:
    """A mariabackup backup of every shop table that has been prepared (--prepare applied the redo log)."""
    v, host = lab.vars, _primary(lab)
    directory, db = v["stage7_mariadb_physical_dir"], v["stage7_mariadb_database"]
    problems = physical_backup_problems(host, directory, db, _tables(host, db))
    return expect(not problems, expected=f"a prepared mariabackup backup of {db} in {directory}",
                  found="; ".join(problems) or "that")


def scratch_problems(lab: Lab) -> list[str]:
    """Why the scratch restore is not a socket-only, binlog-free server of the unit, equal to the source."""
    v = lab.vars
    host, socket, db, unit = _primary(lab), v["stage7_mariadb_scratch_socket"], v["stage7_mariadb_database"], \
        v["stage7_mariadb_scratch_unit"]
    rows, error = _sql_or_error(host, "SELECT @@datadir, @@skip_networking, @@log_bin, @@pid_file", socket)
    if error:
        return [f"no server answers on {socket}"]
    datadir, no_tcp, log_bin, pid_file = rows[0]
    problems = []
    if datadir.rstrip("/") != v["stage7_mariadb_scratch_datadir"].rstrip("/"):
        problems.append(f"the server on {socket} runs on {datadir}, not {v['stage7_mariadb_scratch_datadir']}")
    if no_tcp != "1":
        problems.append("the scratch server listens on a TCP port")
    if log_bin != "0":
        problems.append("the scratch server writes a binary log")
    show = dict(line.split("=", 1) for line in run(host, "systemctl", "show", unit, "-p", "ActiveState",
                                                   "-p", "MainPID").stdout.splitlines() if "=" in line)
    pid = (read(host, pid_file) or "").strip()
    if show.get("ActiveState") != "active":
        problems.append(f"{unit} is not running: the server on {socket} was started by hand")
    elif pid != show.get("MainPID"):
        problems.append(f"the server on {socket} is not the one {unit} runs (started by hand)")
    tables = _tables(host, db)
    source, restored = _checksums(host, tables), _checksums(host, tables, socket)
    differ = [t for t in tables if source.get(t) != restored.get(t)]
    if not tables or differ:
        problems.append(f"{', '.join(differ) or 'the shop tables'} differ from the source")
    return problems


def scratch_restore(lab: Lab) -> Verdict:
    """A second server from its unit on its own datadir and socket, no TCP, no binlog, equal checksums."""
    v = lab.vars
    problems = scratch_problems(lab)
    return expect(not problems, expected=f"{v['stage7_mariadb_scratch_unit']} serving {v['stage7_mariadb_scratch_datadir']} "
                                         f"on {v['stage7_mariadb_scratch_socket']} only, without a binary log, every "
                                         "shop table equal to the source",
                  found="; ".join(problems) or "that")


def server_problems(primary: dict[str, str], replica: dict[str, str]) -> list[str]:
    """What is wrong with the servers' own settings: binlog on the primary, read_only replica, distinct ids."""
    problems = []
    if primary["log_bin"] != "1":
        problems.append("the primary writes no binary log")
    if replica["read_only"] != "1":
        problems.append("the replica is writable")
    if primary["server_id"] == replica["server_id"]:
        problems.append(f"both servers have server id {primary['server_id']}")
    return problems


def persisted_problems(primary: dict[str, str], replica: dict[str, str]) -> list[str]:
    """Settings that hold now but that no option file keeps, so a restart loses them (in words)."""
    problems = []
    if "log-bin" not in primary or primary.get("skip-log-bin") is not None:
        problems.append("no option file on the primary turns the binary log on")
    if replica.get("read-only", "off").lower() not in ON:
        problems.append("no option file makes the replica read-only (a restart makes it writable)")
    ids = primary.get("server-id"), replica.get("server-id")
    if None in ids or ids[0] == ids[1]:
        problems.append("the option files do not give the servers distinct server ids")
    return problems


def _variables(host) -> dict[str, str]:
    (server_id, log_bin, read_only), = sql(host, "SELECT @@server_id, @@log_bin, @@read_only")
    return {"server_id": server_id, "log_bin": log_bin, "read_only": read_only}


def replication_user_problems(user: str, hosts: list[str], grants: dict[str, set[str]], replica: str) -> list[str]:
    """Why the account the replica logs in with is not a replication account allowed only from the replica."""
    if not user or user == "root":
        return [f"the replica logs in as {user or 'nobody'}, not as a replication account"]
    problems = []
    if hosts != [replica]:
        problems.append(f"the replication account {user} may log in from {', '.join(hosts) or 'nowhere'}; the goal "
                        f"allows only the replica ({replica})")
    if any("ALL PRIVILEGES" in privs or "SUPER" in privs for privs in grants.values()):
        problems.append(f"{user} holds far more than replication needs")
    return problems


def replication(lab: Lab) -> Verdict:
    """The replica follows the primary by GTID from a consistent copy, as a dedicated user, with lasting settings."""
    primary, replica = _primary(lab), _replica(lab)
    primary_name, replica_name = lab.hosts()[:2]
    status = parse_vertical(run(replica, "mariadb", "-e", "SHOW SLAVE STATUS\\G").stdout)
    problems = replica_problems(status, lab.address(primary_name))
    problems += server_problems(_variables(primary), _variables(replica))
    problems += persisted_problems(_persisted(primary), _persisted(replica))
    user = status.get("Master_User", "")
    if status and user in ("", "root"):
        problems += replication_user_problems(user, [], {}, lab.address(replica_name))
    elif status:
        hosts = [row[0] for row in _sql_or_error(primary, f"SELECT Host FROM mysql.user WHERE User = '{user}'")[0]]
        rows, _ = _sql_or_error(primary, f"SHOW GRANTS FOR '{user}'@'{hosts[0]}'") if hosts else ([], "")
        problems += replication_user_problems(user, hosts, parse_grants([r[0] for r in rows]),
                                              lab.address(replica_name))
    tables = _tables(primary, lab.vars["stage7_mariadb_database"])
    if _checksums(primary, tables) != _checksums(replica, tables):
        problems.append("the shop tables on the replica differ from the primary's (not started from a consistent "
                        "copy)")
    return expect(not problems, expected="db2 replicating db1 by GTID as a replication account allowed only from db2, "
                                         "both threads running, no lag, the binary log, read-only and distinct ids "
                                         "kept in option files, the shop tables equal",
                  found="; ".join(problems) or "that")


def canary(lab: Lab) -> Verdict:
    """The newest canary row written on the primary reads back identically on the replica, which has caught up."""
    table = lab.vars["stage7_mariadb_canary_table"]
    query = f"SELECT id, note, written_at FROM {table} ORDER BY id DESC LIMIT 1"
    on_primary, error = _sql_or_error(_primary(lab), query)
    on_replica, replica_error = _sql_or_error(_replica(lab), query)
    position, _ = _sql_or_error(_primary(lab), "SELECT @@gtid_binlog_pos")
    applied, _ = _sql_or_error(_replica(lab), "SELECT @@gtid_slave_pos")
    behind = bool(position) and position[0][0] not in (applied[0][0] if applied else "")
    problems = []
    if not on_primary:
        problems.append(f"the primary has no row in {table}" if not error else f"{table} is missing on the primary")
    elif on_primary != on_replica:
        problems.append("the replica's newest canary row differs" if on_replica else
                        f"the replica has no row in {table}" + (" (no such table)" if replica_error else ""))
    if behind:
        problems.append("the replica has not applied everything the primary logged")
    return expect(not problems, expected=f"a row in {table} on the primary, the same newest row on the replica, the "
                                         "replica caught up", found="; ".join(problems) or "that")
