"""The SSH runner the checks use decodes UTF-8 output split across reads."""
from __future__ import annotations

from fabric import Connection

from lab_tasks.remote import WholeCharacterRemote


def test_a_character_split_between_two_reads_is_decoded_whole():
    text = "/etc/ssl/certs/NetLock_Arany_=Class_Gold=_Főtanúsítvány.pem\n" * 40
    data = text.encode()
    runner = WholeCharacterRemote(context=Connection("lab-host.invalid"))
    runner.encoding = "utf-8"
    for chunk_size in (1, 7, 1000):  # 1000: invoke's own read size
        runner.read_chunk_size = chunk_size
        chunks = iter(data[i:i + chunk_size] for i in range(0, len(data), chunk_size))
        assert "".join(runner.read_proc_output(lambda size: next(chunks, b""))) == text
