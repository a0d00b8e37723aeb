"""Stage 7 extras on the sandbox: the restored scratch server matches the source table by table,
and replication carries a fresh canary from the primary to the replica."""
from __future__ import annotations

import shlex
import time
import uuid

import pytest
import yaml
from conftest import run_lab

from lab_tasks.checks.stage7_mariadb import sql
from lab_tasks.registry import PROJECT_ROOT
from lab_tasks.remote import ssh_host
from lab_tasks.topology import Inventory, default_inventory_path

DEFAULTS = yaml.safe_load((PROJECT_ROOT / "roles/stage7_mariadb/defaults/main.yml").read_text())
DATABASE = DEFAULTS["stage7_mariadb_database"]
SCRATCH = DEFAULTS["stage7_mariadb_scratch_socket"]
CANARY = DEFAULTS["stage7_mariadb_canary_table"]
REPLICATION_DEADLINE_S = 30


@pytest.fixture(scope="module")
def db_hosts(sandbox):
    """[primary, replica] testinfra hosts of the solved stage; reset afterwards."""
    run_lab("start", "stage7", check=True)  # solve builds on the prepared stage: the seeded database
    run_lab("solve", "stage7", check=True)
    inventory = Inventory(default_inventory_path())
    hosts = [ssh_host(inventory.host(name)) for name in inventory.hosts("db")]
    yield hosts
    for host in hosts:
        host.backend.close()
    # Leave the stage prepared, not solved: test_stages' `lab start` expects every task to fail.
    assert run_lab("reset", "stage7").returncode == 0


def checksums(host, socket: str | None = None) -> dict[str, str]:
    """CHECKSUM TABLE of every table of the shop database on one server."""
    tables = [f"{DATABASE}.{row[0]}" for row in sql(
        host, f"SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{DATABASE}'", socket)]
    assert tables, f"no tables in {DATABASE} on {socket or 'the primary'}"
    return {row[0]: row[1] for row in sql(host, f"CHECKSUM TABLE {', '.join(tables)}", socket)}


def test_restored_scratch_server_is_a_separate_server(db_hosts):
    primary = db_hosts[0]
    assert sql(primary, "SELECT @@datadir", SCRATCH) != sql(primary, "SELECT @@datadir")


def test_every_restored_table_checksum_equals_the_source(db_hosts):
    primary = db_hosts[0]
    source, restored = checksums(primary), checksums(primary, SCRATCH)
    assert None not in source.values() and "NULL" not in source.values()
    assert restored == source


def test_restored_row_counts_equal_the_seed(db_hosts):
    primary = db_hosts[0]
    counts = sql(primary, f"SELECT (SELECT COUNT(*) FROM {DATABASE}.customers), "
                          f"(SELECT COUNT(*) FROM {DATABASE}.orders)", SCRATCH)
    assert counts == [[str(DEFAULTS["stage7_mariadb_customers"]), str(DEFAULTS["stage7_mariadb_orders"])]]


def test_a_fresh_canary_reaches_the_replica(db_hosts):
    primary, replica = db_hosts
    note = f"pytest {uuid.uuid4().hex[:12]}"
    insert = f"INSERT INTO {CANARY} SELECT COALESCE(MAX(id), 0) + 1, '{note}', NOW() FROM {CANARY}"
    assert primary.run(f"mariadb -e {shlex.quote(insert)}").rc == 0
    query = f"SELECT COUNT(*) FROM {CANARY} WHERE note = '{note}'"
    deadline = time.monotonic() + REPLICATION_DEADLINE_S
    while sql(replica, query) != [["1"]] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sql(replica, query) == [["1"]], f"canary {note!r} did not reach the replica"
