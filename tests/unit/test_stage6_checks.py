"""Reading keepalived's own view for the stage 6 checks: systemd's properties and the journal since it started.

The journal lines are recorded from the sandbox (keepalived 2.2.7 on Debian 12). Whole-task near misses
live in hoststates_stage6.py (run by test_near_misses.py).
"""
from lab_tasks.checks.stage6_keepalived import Keepalived, parse_journal, parse_show

JOURNAL = """\
1796205767.533986 lb1 systemd[1]: keepalived.service: Got notification message from PID 1025
1796205767.534576 lb1 Keepalived[1024]: Startup complete
1796205767.557556 lb1 Keepalived_vrrp[1025]: VRRP_Script(chk_nginx) succeeded
1796205767.557568 lb1 Keepalived_vrrp[1025]: (VI_LB) Entering BACKUP STATE
1796205770.581882 lb1 Keepalived_vrrp[1025]: (VI_LB) Entering MASTER STATE
1796205771.550026 lb1 Keepalived_vrrp[1025]: Script `chk_nginx` now returning 7
1796205772.549075 lb1 Keepalived_vrrp[1025]: VRRP_Script(chk_nginx) failed (exited with status 7)
1796205772.549090 lb1 Keepalived_vrrp[1025]: (VI_LB) Entering FAULT STATE
1796205773.000000 lb1 Keepalived[1024]: Reloading ...
1796205774.558646 lb1 Keepalived_vrrp[1025]: VRRP_Script(chk_nginx) succeeded
1796205774.558659 lb1 Keepalived_vrrp[1025]: (VI_LB) Entering BACKUP STATE
"""


def test_parse_show():
    assert parse_show("ActiveState=active\nExecMainStartTimestamp=@1796205767\nbroken\n") == {
        "ActiveState": "active", "ExecMainStartTimestamp": "@1796205767"}


def test_journal_gives_states_in_order_last_script_result_and_reload_time():
    states, scripts, loaded = parse_journal(JOURNAL.splitlines(), 1796205767)
    assert states == [("VI_LB", "BACKUP"), ("VI_LB", "MASTER"), ("VI_LB", "FAULT"), ("VI_LB", "BACKUP")]
    assert scripts == {"chk_nginx": "succeeded"}
    assert loaded == 1796205773


def test_state_is_the_last_one_entered_per_instance():
    view = Keepalived(True, True, 1, [("VI_LB", "BACKUP"), ("VI_2", "MASTER"), ("VI_LB", "MASTER")], {}, 1)
    assert view.state("VI_LB") == "MASTER" and view.state("VI_2") == "MASTER" and view.state("VI_3") == ""


def test_without_reload_the_config_was_read_at_start():
    assert parse_journal(JOURNAL.splitlines()[:4], 1796205767)[2] == 1796205767
