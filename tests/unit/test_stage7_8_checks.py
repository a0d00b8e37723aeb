"""The parsing and judging logic of the stage 7 (MariaDB) and stage 8 (Docker) checks, without a lab."""
from lab_tasks.checks.stage7_mariadb import (dump_script_problems, parse_defaults, parse_grants, parse_vertical,
                                             replica_problems, server_problems)
from lab_tasks.checks.stage8_docker import instructions, limit_problems, size_bytes

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


def test_limit_problems_compare_with_the_goal():
    goal = ("128m", 64, 0.5)
    assert limit_problems({"Memory": 134217728, "PidsLimit": 64, "NanoCpus": 500000000}, *goal) == []
    assert limit_problems({"Memory": 134217728, "PidsLimit": 64, "CpuQuota": 50000, "CpuPeriod": 100000}, *goal) == []
    assert limit_problems({"Memory": 0, "PidsLimit": -1, "NanoCpus": 0, "CpuQuota": 0}, *goal) == [
        "memory is unlimited; the goal asks for 128 MiB", "processes are unlimited; the goal asks for 64",
        "CPU is unlimited; the goal asks for 0.5 CPU"]
    assert len(limit_problems({"Memory": 1, "PidsLimit": 5, "CpuQuota": 50000}, *goal)) == 2


def test_size_bytes_reads_docker_sizes():
    assert [size_bytes(v) for v in ("128m", "128MiB", "128mb", "134217728", "1g", "512k")] == [
        134217728, 134217728, 134217728, 134217728, 1073741824, 524288]


def test_dockerfile_instructions_join_continuations_and_skip_comments():
    text = "# FROM nothing\nFROM base AS build\nRUN a \\\n    && b\nfrom base\nCOPY --from=build /a /a\n"
    assert instructions(text) == [("FROM", "base AS build"), ("RUN", "a      && b"), ("FROM", "base"),
                                  ("COPY", "--from=build /a /a")]


def test_dump_script_problems():
    good = "#!/bin/bash\nmariadb-dump --single-transaction --databases shop | gzip > x\n"
    assert dump_script_problems(good, "s") == []
    assert dump_script_problems("# --single-transaction\nmariadb-dump shop | gzip > x\n", "s") == [
        "s dumps table by table, not from one consistent snapshot"]
    assert dump_script_problems(good.replace("--databases", "-x --databases"), "s") == [
        "s locks the tables while it dumps; the goal asks for no table locks"]
    assert dump_script_problems("echo hi\n", "s") == ["s runs no dump"]
    assert dump_script_problems(None, "s") == ["s is missing"]


def test_parse_defaults_last_setting_wins():
    text = "--bind-address=127.0.0.1\n--read_only=OFF\n--bind-address=0.0.0.0\n--log-bin\n--read-only=ON\n"
    assert parse_defaults(text) == {"bind-address": "0.0.0.0", "read-only": "ON", "log-bin": ""}


def test_server_problems():
    good = ({"server_id": "1", "log_bin": "1", "read_only": "0"}, {"server_id": "2", "log_bin": "0", "read_only": "1"})
    assert server_problems(*good) == []
    stock = {"server_id": "1", "log_bin": "0", "read_only": "0"}
    assert server_problems(stock, stock) == ["the primary writes no binary log", "the replica is writable",
                                             "both servers have server id 1"]
