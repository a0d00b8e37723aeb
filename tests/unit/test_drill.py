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
    assert summary == {"requests": 6, "failed": 0, "outage_s": 0.0, "recovered": True, "outages": [],
                       "failed_after_vip_moved": 0, "errors": {}}


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
    breaker, restorer = drill.break_commands("stop-host", "host0")
    assert "ip link set dev host0 down" in breaker and "ip link set dev host0 up" in breaker
    assert f"systemctl stop {drill.LINK_DOWN_UNIT}" in restorer and "ip link set dev host0 up" in restorer
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


def test_a_request_sent_before_the_break_starts_the_outage_at_the_break():
    samples = [Sample(0.0, True), Sample(0.9, False), Sample(1.2, False), Sample(1.5, True)]
    assert drill.summarize(samples, t_break=1.0)["outage_s"] == pytest.approx(0.5)
    assert drill.summarize(samples, t_break=1.0, t_moved=1.1)["failed_after_vip_moved"] == 1


def stream(t, ok, chunks=3, request=0, attempt=0) -> Sample:
    return Sample(t, ok, end=t + 0.5, chunks=chunks, request=request, attempt=attempt)


def test_stream_summary_counts_broken_streams_retries_and_requests_after_the_move():
    attempts = [
        stream(0.0, True, request=0),
        stream(0.8, False, chunks=2, request=1),             # in flight through the dead balancer: broken
        stream(1.1, False, chunks=0, request=2),             # refused: retried...
        stream(1.3, False, chunks=0, request=2, attempt=1),  # ...and again...
        stream(1.6, True, request=2, attempt=2),             # ...and served by the new MASTER
        stream(1.7, True, request=3),
    ]
    summary = drill.summarize_streams(attempts, t_break=1.0, t_moved=1.5)
    assert (summary["requests"], summary["failed"]) == (4, 1)
    assert (summary["broken_streams"], summary["retries"], summary["failed_after_vip_moved"]) == (1, 2, 0)
    assert summary["errors"] == {"failed": 3}
    assert summary["outage_s"] == pytest.approx(0.5) and summary["outages"] == [[1.1, 1.6]]
    assert summary["recovered"]


def test_a_request_failing_after_the_vip_moved_is_counted():
    attempts = [stream(0.0, True), stream(2.0, False, chunks=0, request=1), stream(2.2, True, request=2)]
    assert drill.summarize_streams(attempts, t_break=1.0, t_moved=1.5)["failed_after_vip_moved"] == 1


class FakeLoad:
    """A load that always succeeds, on a clock the test controls."""

    def __init__(self):
        self.started = self.stopped = self.aborted = False
        self.t = 0.0

    def start(self):
        self.started = True

    def now(self):
        self.t += 0.1
        return self.t

    def succeeded_since(self, t, count=1):
        return True

    def mark_break(self, t, lag_s=0.0):
        self.marked = t

    def stop(self, abort=False):
        self.stopped, self.aborted = True, abort
        return [Sample(0.0, True), Sample(self.t, True)]

    def summary(self, samples, t_break, t_moved):
        return drill.summarize(samples, t_break, t_moved)


class FakeLab:
    """Two lb hosts; lb1 holds the VIP until broken, then lb2 does. `fail_on` makes one command raise."""

    def __init__(self, fail_on: str | None = None, error: BaseException | None = None, fail_times: int = 1):
        self.commands: list[tuple[str, str]] = []
        self.broken = False
        self.fail_on, self.error, self.fail_times = fail_on, error, fail_times
        self.reconnects: list[str] = []

    def run(self, host, command):
        """The command takes effect, then the reply is lost when it matches `fail_on`."""
        self.commands.append((host, command))
        if command.startswith("systemctl stop nginx"):
            self.broken = True
        if command.startswith("systemctl start nginx"):
            self.broken = False
        if self.fail_on and self.fail_on in command and self.fail_times > 0:
            self.fail_times -= 1
            raise self.error
        if command.startswith("systemctl is-active"):
            return SimpleNamespace(rc=1 if self.broken else 0, stdout="")
        if command.startswith("ip -o -4 addr show"):
            return SimpleNamespace(rc=0, stdout=f"2: host0    inet {command.split()[-1][:-3]}/24 ...")
        holder = "lb2" if self.broken or any("stop nginx" in c for _, c in self.commands) else "lb1"
        address = "10.213.7.100/24" if host == holder else ""
        return SimpleNamespace(rc=0, stdout=f"host0 UP 10.213.7.1{host[-1]}/24 {address}\n")

    def cluster(self) -> drill.Cluster:
        return drill.Cluster(run=self.run, hosts=["lb1", "lb2"], vip="10.213.7.100", http_port=80,
                             addresses={"lb1": "10.213.7.11", "lb2": "10.213.7.12"},
                             reconnect=self.reconnects.append)

    def restored(self) -> bool:
        return ("lb1", "systemctl start nginx") in self.commands and not self.broken


PLAN = drill.Plan("stop-nginx", duration_s=5)


def test_a_drill_breaks_the_master_restores_it_and_measures(monkeypatch):
    monkeypatch.setattr(drill, "SETTLE_S", 0.0)
    lab, load = FakeLab(), FakeLoad()
    result = drill.run_drill(lab.cluster(), PLAN, load)
    assert (result.from_host, result.to_host, result.restored) == ("lb1", "lb2", True)
    assert lab.restored() and load.stopped and not load.aborted
    assert result.vip_moved_s is not None and result.failed_after_vip_moved == 0


@pytest.mark.parametrize("error", [KeyboardInterrupt(), drill.Interrupted("signal 15"),
                                   EOFError("SSH connection lost"), TimeoutError("command timed out")])
def test_the_master_is_restored_whatever_stops_the_drill_after_the_break(error):
    lab, load = FakeLab(), FakeLoad()

    def run_then_fail(host, command):
        if lab.broken and command == "ip -br addr":
            raise error
        return FakeLab.run(lab, host, command)

    cluster = lab.cluster()
    cluster.run = run_then_fail
    with pytest.raises(type(error)):
        drill.run_drill(cluster, PLAN, load)
    assert lab.restored(), lab.commands
    assert load.aborted
    assert lab.reconnects == ["lb1"]  # the restore starts on a fresh connection


def test_an_ssh_error_while_breaking_still_restores():
    lab = FakeLab(fail_on="systemctl stop nginx", error=EOFError("connection reset"))
    with pytest.raises(EOFError):
        drill.run_drill(lab.cluster(), PLAN, FakeLoad())
    assert lab.restored()


def test_restore_reconnects_and_retries_after_ssh_errors():
    lab = FakeLab(fail_on="systemctl start nginx", error=EOFError("connection reset"), fail_times=2)
    lab.broken = True
    assert drill.restore(lab.cluster(), "lb1", "systemctl start nginx", "stop-nginx", timeout_s=10)
    assert lab.restored() and lab.reconnects == ["lb1"] * 3


def test_restore_gives_up_after_its_timeout_and_says_how_to_fix():
    lab = FakeLab(fail_on="systemctl", error=EOFError("host gone"), fail_times=10**6)
    said = []
    cluster = lab.cluster()
    cluster.log = said.append
    assert not drill.restore(cluster, "lb1", "systemctl start nginx", "stop-nginx", timeout_s=1)
    assert "on it run `systemctl start nginx`" in said[-1]


def test_sigterm_during_a_drill_raises_interrupted_and_restores(monkeypatch):
    import os
    import signal
    lab = FakeLab()

    def sigterm_once_broken(host, command):
        if lab.broken and command == "ip -br addr":
            os.kill(os.getpid(), signal.SIGTERM)
        return FakeLab.run(lab, host, command)

    cluster = lab.cluster()
    cluster.run = sigterm_once_broken
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(drill.Interrupted), drill.interruptible():
        drill.run_drill(cluster, PLAN, FakeLoad())
    assert lab.restored()
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_during_the_restore_waits_for_it_then_interrupts():
    import os
    import signal
    lab = FakeLab()
    lab.broken = True

    def ctrl_c_while_restoring(host, command):
        if command == "systemctl start nginx":
            os.kill(os.getpid(), signal.SIGINT)
        return FakeLab.run(lab, host, command)

    cluster = lab.cluster()
    cluster.run = ctrl_c_while_restoring
    with pytest.raises(KeyboardInterrupt):
        drill.restore(cluster, "lb1", "systemctl start nginx", "stop-nginx", timeout_s=5)
    assert lab.restored()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_drill_results_of_the_platform_are_kept_apart_from_the_lb_ones(tmp_path):
    drill.save(result(), tmp_path)
    drill.save(result(target="inference", group="edge", vip="10.213.7.200", broken_streams=3,
                      started_at="2026-01-02T03:06:00+00:00"), tmp_path)
    assert drill.load_last(tmp_path)["vip"] == "10.213.7.100"
    assert drill.load_last_for("edge", directory=tmp_path)["broken_streams"] == 3
    assert drill.load_last_for("edge", "stop-nginx", tmp_path)["target"] == "inference"
    assert (tmp_path / "failover-edge-2026-01-02T030600Z.json").exists()


def lab_cli(capsys, *args):
    from lab_tasks.cli import main
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_the_inference_drill_needs_two_edge_hosts(tmp_path, capsys):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    edge:\n      hosts:\n        edge1: {ansible_host: 127.0.0.2}\n")
    code, _, err = lab_cli(capsys, "drill", "failover", "--target", "inference", "-i", str(inventory))
    assert code == 2 and err.startswith("Error: the inventory has 1 host(s) in group 'edge'")


def test_the_inference_drill_says_how_to_deploy_when_the_api_does_not_answer(tmp_path, capsys):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  vars: {opslab_edge_vip: 127.0.0.3}\n  children:\n    edge:\n      hosts:\n"
                         "        edge1: {ansible_host: 127.0.0.2}\n        edge2: {ansible_host: 127.0.0.2}\n")
    code, _, err = lab_cli(capsys, "drill", "failover", "--target", "inference", "-i", str(inventory))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "the inference API at http://127.0.0.3/v1/models does not answer" in err
    assert "deploy the platform (`ansible-playbook site.yml`)" in err
