"""Recorded host states of stage 7 (MariaDB): the solved db1 (primary) and db2 (replica), and the near misses.

Every query the checks send is recorded with the answer the sandbox gave (tab-separated batch output).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime, timezone

from hoststates import FakeFile, FakeHost, FakeInventory, NearMiss, Result, fake_lab

STAGE = "stage7"
PRIMARY, REPLICA = "10.213.7.31", "10.213.7.32"
SOCKET = "/run/mysqld-scratch/mysqld.sock"
PW = "/etc/opslab/mariadb-shop_app.pw"
SCRIPT = "/usr/local/sbin/shop-dump"
LOGICAL = "/var/backups/mariadb/logical"
PHYSICAL = "/var/backups/mariadb/physical/base"
DUMPS = [f"{LOGICAL}/shop-20261202-1003{s}.sql.gz" for s in ("56", "12", "05")]
TABLES = "shop.customers\nshop.orders\n"
CHECKSUMS = "shop.customers\t1908722281\nshop.orders\t2890112740\n"
CANARY = "1\tfirst canary\t2026-12-02 10:03:57\n"
CHECKPOINTS = "backup_type = log-applied\nfrom_lsn = 0\nto_lsn = 3418934\nlast_lsn = 3418934\nrecover_binlog_info = 0\n"
DUMP_SCRIPT = """#!/bin/bash
set -euo pipefail
out=/var/backups/mariadb/logical/shop-$(date +%Y%m%d-%H%M%S).sql.gz
mariadb-dump --single-transaction --routines --databases shop | gzip -9 > "$out"
ls -1 /var/backups/mariadb/logical/shop-2*.sql.gz | sort -r | tail -n +4 | xargs -r rm -f --
"""
SLAVE_STATUS = f"""*************************** 1. row ***************************
                Slave_IO_State: Waiting for master to send event
                   Master_Host: {PRIMARY}
                   Master_User: repl
              Slave_IO_Running: Yes
             Slave_SQL_Running: Yes
         Seconds_Behind_Master: 0
                    Using_Gtid: Slave_Pos
"""
PRIMARY_DEFAULTS = "--socket=/run/mysqld/mysqld.sock\n--bind-address=0.0.0.0\n--server-id=1\n--log-bin=mariadb-bin\n" \
                   "--read-only=OFF\n"
REPLICA_DEFAULTS = "--socket=/run/mysqld/mysqld.sock\n--bind-address=127.0.0.1\n--server-id=2\n--read-only=ON\n"
SCRIPT_WRITTEN = 1796205800


@dataclass
class TimedFile(FakeFile):
    """A FakeFile with testinfra's mtime."""

    written: int = SCRIPT_WRITTEN + 30

    @property
    def mtime(self) -> datetime:
        return datetime.fromtimestamp(self.written, timezone.utc)


def cmd(*argv: str) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def q(query: str, socket: str | None = None) -> str:
    """The command line of a root query over the socket (checks' `sql`)."""
    return cmd("mariadb", "--batch", "--skip-column-names", *([f"--socket={socket}"] if socket else []), "-e", query)


TABLES_Q = q("SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'shop' "
             "AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1")
CHECKSUM_Q = "CHECKSUM TABLE shop.customers, shop.orders"
CANARY_Q = q("SELECT id, note, written_at FROM opslab.canary ORDER BY id DESC LIMIT 1")
LOGIN = (f"MYSQL_PWD=\"$(cat {PW})\" mariadb --batch --skip-column-names -u shop_app "
         f"-e {shlex.quote('SELECT COUNT(*) FROM shop.orders')}")
GRANTS = ("GRANT USAGE ON *.* TO `shop_app`@`localhost` IDENTIFIED BY PASSWORD '*AB12'\n"
          "GRANT SELECT, INSERT, UPDATE ON `shop`.* TO `shop_app`@`localhost`\n")


def db1(**changes) -> FakeHost:
    """The primary as recorded after `lab solve stage7`; `changes` replace recorded commands or files by key."""
    commands = {
        q("SELECT User, Host FROM mysql.user WHERE User = '' OR (User = 'root' AND Host <> 'localhost')"): "",
        q("SHOW DATABASES LIKE 'test'"): "",
        q("SELECT Host, authentication_string <> '' OR plugin NOT IN ('', 'mysql_native_password') FROM mysql.user "
          "WHERE User = 'shop_app'"): "localhost\t1\n",
        q("SHOW GRANTS FOR 'shop_app'@'localhost'"): GRANTS,
        LOGIN: "3000\n",
        cmd("bash", "-n", SCRIPT): "",
        cmd("find", LOGICAL, "-maxdepth", "1", "-type", "f", "-name", "shop-[0-9]*.sql.gz"): "\n".join(DUMPS) + "\n",
        cmd("gzip", "-t", DUMPS[0]): "",
        cmd("sh", "-c", f"zcat {DUMPS[0]} | tail -n 1"): "-- Dump completed on 2026-12-02 10:03:56\n",
        cmd("zgrep", "-q", "CREATE TABLE `orders`", DUMPS[0]): "",
        TABLES_Q: TABLES,
        q(CHECKSUM_Q): CHECKSUMS,
        q(CHECKSUM_Q, SOCKET): CHECKSUMS,
        q("SELECT @@datadir, @@skip_networking, @@log_bin, @@pid_file", SOCKET):
            "/var/lib/mariadb-scratch/\t1\t0\t/run/mysqld-scratch/mariadbd.pid\n",
        cmd("systemctl", "show", "mariadb-scratch.service", "-p", "ActiveState", "-p", "MainPID"):
            "ActiveState=active\nMainPID=4242\n",
        q("SELECT @@server_id, @@log_bin, @@read_only"): "1\t1\t0\n",
        cmd("my_print_defaults", "--mysqld"): PRIMARY_DEFAULTS,
        q("SELECT Host FROM mysql.user WHERE User = 'repl'"): f"{REPLICA}\n",
        q(f"SHOW GRANTS FOR 'repl'@'{REPLICA}'"):
            f"GRANT REPLICATION SLAVE ON *.* TO `repl`@`{REPLICA}` IDENTIFIED BY PASSWORD '*CD34'\n",
        CANARY_Q: CANARY,
        q("SELECT @@gtid_binlog_pos"): "0-1-27\n",
    }
    files = {
        PW: FakeFile("s3cret-generated\n", mode=0o600),
        SCRIPT: TimedFile(DUMP_SCRIPT, mode=0o750, written=SCRIPT_WRITTEN),
        **{path: TimedFile("gz", mode=0o600) for path in DUMPS},
        f"{PHYSICAL}/xtrabackup_checkpoints": CHECKPOINTS,
        **{f"{PHYSICAL}/{name}": "x" for name in ("xtrabackup_info", "backup-my.cnf", "ibdata1", "shop/customers.ibd",
                                                  "shop/orders.ibd")},
        "/run/mysqld-scratch/mariadbd.pid": "4242\n",
    }
    for key, value in changes.items():
        (files if key.startswith("/") and " " not in key else commands)[key] = value
    return FakeHost(files=files, commands=commands)


def db2(**changes) -> FakeHost:
    """The replica as recorded after `lab solve stage7`."""
    commands = {
        cmd("mariadb", "-e", "SHOW SLAVE STATUS\\G"): SLAVE_STATUS,
        q("SELECT @@server_id, @@log_bin, @@read_only"): "2\t0\t1\n",
        cmd("my_print_defaults", "--mysqld"): REPLICA_DEFAULTS,
        q(CHECKSUM_Q): CHECKSUMS,
        CANARY_Q: CANARY,
        q("SELECT @@gtid_slave_pos"): "0-1-27\n",
    } | changes
    return FakeHost(commands=commands)


def lab(primary: FakeHost | None = None, replica: FakeHost | None = None):
    return fake_lab(STAGE, {"db1": primary or db1(), "db2": replica or db2()},
                    inventory=FakeInventory({"db": {"db1": PRIMARY, "db2": REPLICA}}))


def solved(tmp_path):
    return lab()


def _miss(task, mistake, says, primary=None, replica=None) -> NearMiss:
    return NearMiss(task, mistake, lambda tmp_path: lab(primary, replica), says)


DENIED = Result(1, "", "ERROR 1045 (28000): Access denied for user 'shop_app'@'localhost' (using password: YES)")
SCRATCH_BY_HAND = {cmd("systemctl", "show", "mariadb-scratch.service", "-p", "ActiveState", "-p", "MainPID"):
                   "ActiveState=inactive\nMainPID=0\n"}

NEAR_MISSES = [
    _miss("secure_install", "root may still log in from anywhere", "root may log in from %",
          db1(**{q("SELECT User, Host FROM mysql.user WHERE User = '' OR (User = 'root' AND Host <> 'localhost')"):
                 "root\t%\n"})),
    _miss("secure_install", "an anonymous account left", "an anonymous account from localhost",
          db1(**{q("SELECT User, Host FROM mysql.user WHERE User = '' OR (User = 'root' AND Host <> 'localhost')"):
                 "\tlocalhost\n"})),
    _miss("secure_install", "the test database left", "the test database is still there",
          db1(**{q("SHOW DATABASES LIKE 'test'"): "test\n"})),
    _miss("app_user", "ALL PRIVILEGES on shop", "shop_app holds every privilege on shop",
          db1(**{q("SHOW GRANTS FOR 'shop_app'@'localhost'"):
                 GRANTS.replace("SELECT, INSERT, UPDATE", "ALL PRIVILEGES")})),
    _miss("app_user", "DELETE as well", "shop_app may also DELETE on shop",
          db1(**{q("SHOW GRANTS FOR 'shop_app'@'localhost'"): GRANTS.replace("UPDATE", "UPDATE, DELETE")})),
    _miss("app_user", "an extra shop_app@'%' account", "shop_app may also log in from %",
          db1(**{q("SELECT Host, authentication_string <> '' OR plugin NOT IN ('', 'mysql_native_password') FROM "
                   "mysql.user WHERE User = 'shop_app'"): "localhost\t1\n%\t1\n"})),
    _miss("app_user", "no password on the account and an empty password file", ("has no password", "is empty"),
          db1(**{q("SELECT Host, authentication_string <> '' OR plugin NOT IN ('', 'mysql_native_password') FROM "
                   "mysql.user WHERE User = 'shop_app'"): "localhost\t0\n", PW: FakeFile("", mode=0o600)})),
    _miss("app_user", "the password file readable by everyone", "is open to its group and others; the goal asks for mode 0600",
          db1(**{PW: FakeFile("s3cret\n", mode=0o644)})),
    _miss("app_user", "the file holds another password than the account's", "cannot log in with the password",
          db1(**{LOGIN: DENIED})),
    _miss("logical_backup", "table locks instead of one snapshot", "locks the tables",
          db1(**{SCRIPT: TimedFile(DUMP_SCRIPT.replace("--single-transaction", "--lock-all-tables"), mode=0o750,
                                   written=SCRIPT_WRITTEN)})),
    _miss("logical_backup", "no --single-transaction (only in a comment)", "not from one consistent snapshot",
          db1(**{SCRIPT: TimedFile("#!/bin/bash\n# --single-transaction\nmariadb-dump shop | gzip > x\n", mode=0o750,
                                   written=SCRIPT_WRITTEN)})),
    _miss("logical_backup", "the script is not executable", "is not executable",
          db1(**{SCRIPT: TimedFile(DUMP_SCRIPT, mode=0o644, written=SCRIPT_WRITTEN)})),
    _miss("logical_backup", "no rotation: the stale dumps are still there", "5 dated dumps are kept",
          db1(**{cmd("find", LOGICAL, "-maxdepth", "1", "-type", "f", "-name", "shop-[0-9]*.sql.gz"):
                 "\n".join(DUMPS + [f"{LOGICAL}/shop-20200101-000000.sql.gz", f"{LOGICAL}/shop-20200102-000000.sql.gz"])})),
    _miss("logical_backup", "the script changed after the newest dump", "run it again",
          db1(**{SCRIPT: TimedFile(DUMP_SCRIPT, mode=0o750, written=SCRIPT_WRITTEN + 3600)})),
    _miss("logical_backup", "the dump was cut short", "stops before the end",
          db1(**{cmd("sh", "-c", f"zcat {DUMPS[0]} | tail -n 1"): "INSERT INTO `orders` VALUES (1,"})),
    _miss("physical_backup", "backup taken, never prepared", "taken but not prepared",
          db1(**{f"{PHYSICAL}/xtrabackup_checkpoints": CHECKPOINTS.replace("log-applied", "full-backuped")})),
    _miss("physical_backup", "an echo into xtrabackup_checkpoints", "does not look like mariabackup's work",
          db1(**{f"{PHYSICAL}/xtrabackup_checkpoints": "backup_type = log-applied\n",
                 f"{PHYSICAL}/xtrabackup_info": FakeFile(kind="missing"),
                 f"{PHYSICAL}/backup-my.cnf": FakeFile(kind="missing")})),
    _miss("physical_backup", "no backup at all", "holds no mariabackup backup",
          db1(**{f"{PHYSICAL}/xtrabackup_checkpoints": FakeFile(kind="missing")})),
    _miss("scratch_restore", "mariadbd started by hand, no unit", "started by hand", db1(**SCRATCH_BY_HAND)),
    _miss("scratch_restore", "the scratch server listens on TCP and logs binlogs",
          ("listens on a TCP port", "writes a binary log"),
          db1(**{q("SELECT @@datadir, @@skip_networking, @@log_bin, @@pid_file", SOCKET):
                 "/var/lib/mariadb-scratch/\t0\t1\t/run/mysqld-scratch/mariadbd.pid\n"})),
    _miss("scratch_restore", "restored from the stale logical dump", "shop.orders differ from the source",
          db1(**{q(CHECKSUM_Q, SOCKET): "shop.customers\t1908722281\nshop.orders\t17\n"})),
    _miss("scratch_restore", "nothing on the scratch socket", "no server answers",
          db1(**{q("SELECT @@datadir, @@skip_networking, @@log_bin, @@pid_file", SOCKET):
                 Result(1, "", "ERROR 2002 (HY000): Can't connect to local server through socket")})),
    _miss("replication", "the replication user may log in from anywhere", "may log in from %",
          db1(**{q("SELECT Host FROM mysql.user WHERE User = 'repl'"): "%\n",
                 q("SHOW GRANTS FOR 'repl'@'%'"): "GRANT REPLICATION SLAVE ON *.* TO `repl`@`%`\n"})),
    _miss("replication", "replicating as root", "logs in as root",
          replica=db2(**{cmd("mariadb", "-e", "SHOW SLAVE STATUS\\G"): SLAVE_STATUS.replace("User: repl", "User: root")})),
    _miss("replication", "read_only set by hand, not in an option file", "no option file makes the replica read-only",
          replica=db2(**{cmd("my_print_defaults", "--mysqld"): REPLICA_DEFAULTS.replace("--read-only=ON\n", "")})),
    _miss("replication", "the replica writable", "the replica is writable",
          replica=db2(**{q("SELECT @@server_id, @@log_bin, @@read_only"): "2\t0\t0\n"})),
    _miss("replication", "the SQL thread stopped", "Slave_SQL_Running=No",
          replica=db2(**{cmd("mariadb", "-e", "SHOW SLAVE STATUS\\G"):
                         SLAVE_STATUS.replace("Slave_SQL_Running: Yes", "Slave_SQL_Running: No")})),
    _miss("replication", "started from an empty replica instead of a consistent copy", "not started from a consistent",
          replica=db2(**{q(CHECKSUM_Q): "shop.customers\tNULL\nshop.orders\tNULL\n"})),
    _miss("canary", "the row inserted on the replica by hand, replication stuck behind",
          "has not applied everything", replica=db2(**{q("SELECT @@gtid_slave_pos"): "0-1-20\n"})),
    _miss("canary", "no canary row on the replica", "the replica has no row in opslab.canary",
          replica=db2(**{CANARY_Q: ""})),
    _miss("canary", "the table was never created", "opslab.canary is missing on the primary",
          db1(**{CANARY_Q: Result(1, "", "ERROR 1146 (42S02): Table 'opslab.canary' doesn't exist")})),
]
