"""Network audit for a Python subprocess: put this folder first on PYTHONPATH (see `samri.testing.netaudit`).

Every ``socket.connect`` and every host name lookup is checked; a target that is not loopback is
appended to ``$SAMRI_NET_AUDIT`` (one tab-separated line: pid, event, target). Loopback connects are
counted in ``$SAMRI_NET_AUDIT.loopback`` so a test can tell the hook was active. The attempt itself
is not blocked (the test decides).
"""

import ipaddress
import os
import sys

_PATH = os.environ.get("SAMRI_NET_AUDIT")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").split("%")[0]
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _write(path, line) -> None:
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


def _hook(event, args) -> None:
    if event == "socket.connect":
        address = args[1]
        if not isinstance(address, tuple) or not address:
            return  # AF_UNIX
        host, target = address[0], f"{address[0]}:{address[1] if len(address) > 1 else ''}"
    elif event == "socket.getaddrinfo":
        host, target = args[0], f"{args[0]}:{args[1]}"
        if host is None:
            return
    else:
        return
    if _is_loopback(host):
        if event == "socket.connect":
            _write(_PATH + ".loopback", f"{os.getpid()}\t{target}")
        return
    _write(_PATH, f"{os.getpid()}\t{event}\t{target}")


if _PATH:
    sys.addaudithook(_hook)
