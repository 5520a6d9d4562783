"""The network audit hook used by the no-outbound test really records what it should."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

from samri.testing.netaudit import audit_env, loopback_connects, outbound_attempts


def test_hook_records_non_loopback_attempts_and_counts_loopback(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    code = textwrap.dedent(f"""
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
        s = socket.socket()
        s.settimeout(0.2)
        try:
            s.connect(("192.0.2.1", 9))   # TEST-NET-1: never routed
        except OSError:
            pass
        try:
            socket.getaddrinfo("example.invalid", 443)
        except OSError:
            pass
    """)
    record = tmp_path / "net.log"
    env = {**audit_env(record), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    listener.close()
    attempts = outbound_attempts(record)
    assert any("socket.connect\t192.0.2.1:9" in a for a in attempts), attempts
    assert any("socket.getaddrinfo\texample.invalid:443" in a for a in attempts), attempts
    assert not any("127.0.0.1" in a for a in attempts)
    assert loopback_connects(record) >= 1
