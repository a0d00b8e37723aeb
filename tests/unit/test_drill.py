"""The failover drill's pure logic: outages from a synthetic timeline, VIP holders, saved results."""
from types import SimpleNamespace

import pytest

from lab_tasks import drill
from lab_tasks.drill import Sample
from lab_tasks.errors import LabError


def timeline(pattern: str, step: float = 0.05) -> list[Sample]:
    """Samples every `step` s: '+' a success, '-' a failure."""
    return [Sample(round(i * step, 3), mark == "+") for i, mark in enumerate(pattern)]


def test_no_failure_means_no_outage():
    summary = drill.summarize(timeline("++++++"))
    assert summary == {"requests": 6, "failed": 0, "outage_s": 0.0, "recovered": True, "outages": []}


def test_outage_runs_from_first_failure_to_next_success():
    summary = drill.summarize(timeline("+++" + "-" * 40 + "+++"))
    assert summary["failed"] == 40
    assert summary["outage_s"] == pytest.approx(40 * 0.05)
    assert summary["outages"] == [[0.15, 2.15]]
    assert summary["recovered"]


def test_the_longest_of_several_outages_counts():
    summary = drill.summarize(timeline("+--+" + "-" * 10 + "+"))
    assert [o[1] - o[0] for o in summary["outages"]] == pytest.approx([0.1, 0.5])
    assert summary["outage_s"] == pytest.approx(0.5)
    assert summary["failed"] == 12


def test_an_outage_that_never_ends_is_not_recovered():
    summary = drill.summarize(timeline("++-----"))
    assert not summary["recovered"]
    assert summary["outages"] == [[0.1, None]]
    assert summary["outage_s"] == pytest.approx(0.2)


def test_slow_failures_stretch_the_outage():
    samples = [Sample(0.0, True), Sample(0.05, False), Sample(0.6, False), Sample(1.15, False), Sample(1.7, True)]
    assert drill.summarize(samples)["outage_s"] == pytest.approx(1.65)


def fake_run(outputs: dict[str, str]):
    return lambda host, command: SimpleNamespace(rc=0, stdout=outputs[host])


IP_BR = {
    "lb1": "lo UNKNOWN 127.0.0.1/8\nhost0@if7 UP 10.213.7.11/24 10.213.7.100/24\n",
    "lb2": "lo UNKNOWN 127.0.0.1/8\nhost0@if9 UP 10.213.7.12/24\n",
    "lb3": "host0@if11 UP 10.213.7.13/24 10.213.7.1000/24 110.213.7.100/24\n",
}


def test_vip_holders_match_the_whole_address():
    assert drill.vip_holders(fake_run(IP_BR), ["lb1", "lb2", "lb3"], "10.213.7.100") == ["lb1"]


def test_single_holder_rejects_split_brain():
    both = {"lb1": IP_BR["lb1"], "lb2": IP_BR["lb1"]}
    with pytest.raises(LabError, match="on 2 hosts"):
        drill.single_holder(fake_run(both), ["lb1", "lb2"], "10.213.7.100", timeout_s=0)


def test_break_and_restore_commands():
    assert drill.break_commands("stop-nginx", "host0") == ("systemctl stop nginx", "systemctl start nginx")
    breaker, _ = drill.break_commands("stop-host", "host0")
    assert "ip link set dev host0 down" in breaker and "ip link set dev host0 up" in breaker
    with pytest.raises(LabError, match="unknown drill method"):
        drill.break_commands("unplug", "host0")


def result(**overrides) -> drill.DrillResult:
    fields = dict(method="stop-nginx", vip="10.213.7.100", from_host="lb1", to_host="lb2",
                  started_at="2026-01-02T03:04:05+00:00", holders_before=["lb1"], holders_after=["lb2"],
                  served_by={"lb1": 10, "lb2": 20}, config_sha256={"lb1": "a", "lb2": "b"},
                  interval_s=0.05, duration_s=20.0, **drill.summarize(timeline("++--++")))
    return drill.DrillResult(**{**fields, **overrides})


def test_save_keeps_history_and_last(tmp_path):
    last = drill.save(result(), tmp_path)
    assert last.name == "last-failover.json"
    assert (tmp_path / "failover-2026-01-02T030405Z.json").exists()
    loaded = drill.load_last(tmp_path)
    assert {"outage_s", "requests", "failed", "from_host", "to_host", "method"} <= loaded.keys()
    assert loaded["outage_s"] == pytest.approx(0.1) and loaded["failed"] == 2


def test_the_last_result_of_each_method_is_kept(tmp_path):
    drill.save(result(), tmp_path)
    drill.save(result(method="stop-host", started_at="2026-01-02T03:05:00+00:00"), tmp_path)
    assert drill.load_last(tmp_path)["method"] == "stop-host"
    assert drill.load_last(tmp_path, method="stop-nginx")["method"] == "stop-nginx"
    assert drill.load_last(tmp_path, method="stop-keepalived") is None


def test_load_last_without_a_drill(tmp_path):
    assert drill.load_last(tmp_path) is None
    (tmp_path / "last-failover.json").write_text("{not json")
    assert drill.load_last(tmp_path) is None


def test_drills_dir_follows_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLAB_STATE_DIR", str(tmp_path))
    assert drill.drills_dir() == tmp_path / "drills"
