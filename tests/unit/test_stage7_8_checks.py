"""The parsing and judging logic of the stage 7 (MariaDB) and stage 8 (Docker) checks, without a lab."""
from lab_tasks.checks.stage7_mariadb import parse_grants, parse_vertical, replica_problems, server_problems
from lab_tasks.checks.stage8_docker import from_lines, limit_problems

SLAVE_STATUS = """*************************** 1. row ***************************
                Slave_IO_State: Waiting for master to send event
                   Master_Host: 10.213.7.31
              Slave_IO_Running: Yes
             Slave_SQL_Running: Yes
         Seconds_Behind_Master: 0
                    Using_Gtid: Slave_Pos
"""


def test_parse_grants_groups_privileges_by_target():
    lines = ["GRANT USAGE ON *.* TO `shop_app`@`localhost` IDENTIFIED BY PASSWORD '*AB12'",
             "GRANT SELECT, INSERT, UPDATE ON `shop`.* TO `shop_app`@`localhost`"]
    assert parse_grants(lines) == {"*.*": {"USAGE"}, "`shop`.*": {"SELECT", "INSERT", "UPDATE"}}


def test_parse_grants_sees_a_broad_grant():
    assert parse_grants(["GRANT ALL PRIVILEGES ON *.* TO `x`@`%`"]) == {"*.*": {"ALL PRIVILEGES"}}


def test_healthy_replica_has_no_problems():
    assert replica_problems(parse_vertical(SLAVE_STATUS), "10.213.7.31") == []


def test_replica_problems_name_each_bad_field():
    status = parse_vertical(SLAVE_STATUS.replace("Slave_SQL_Running: Yes", "Slave_SQL_Running: No")
                            .replace("Seconds_Behind_Master: 0", "Seconds_Behind_Master: NULL"))
    assert replica_problems(status, "10.213.7.31") == ["Slave_SQL_Running=No", "Seconds_Behind_Master=NULL"]


def test_replica_of_another_primary_or_none_fails():
    assert replica_problems(parse_vertical(SLAVE_STATUS), "10.213.7.32") == ["Master_Host=10.213.7.31"]
    assert replica_problems({}, "10.213.7.31") == ["SHOW SLAVE STATUS is empty (not a replica)"]


def test_from_lines_counts_build_stages():
    dockerfile = "# FROM comment\nFROM base AS build\nRUN true\nfrom base\nCOPY --from=build /a /a\n"
    assert from_lines(dockerfile) == ["FROM base AS build", "from base"]


def test_limit_problems():
    assert limit_problems({"Memory": 134217728, "PidsLimit": 64, "NanoCpus": 500000000}) == []
    assert limit_problems({"Memory": 0, "PidsLimit": -1, "NanoCpus": 0, "CpuQuota": 0}) == [
        "no memory limit", "no pids limit", "no cpus limit"]
    assert limit_problems({"Memory": 1, "PidsLimit": 5, "CpuQuota": 50000}) == []


def test_server_problems():
    good = ({"server_id": "1", "log_bin": "1", "read_only": "0"}, {"server_id": "2", "log_bin": "0", "read_only": "1"})
    assert server_problems(*good) == []
    stock = {"server_id": "1", "log_bin": "0", "read_only": "0"}
    assert server_problems(stock, stock) == ["primary log_bin=0", "replica read_only=0", "both server_id=1"]
