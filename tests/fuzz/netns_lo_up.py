"""Bring up the loopback interface of a fresh network namespace and prove it is the only way out.

Run inside ``unshare --net``; uses the SIOCSIFFLAGS ioctl so the fuzz script needs no
``ip`` command. Exits non-zero if any interface other than ``lo`` exists, or if a
connection to a public address does anything but fail with "network unreachable".
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
import sys

SIOCSIFFLAGS = 0x8914
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40


def main() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))
    others = [name for _, name in socket.if_nameindex() if name != "lo"]
    if others:
        print(f"refusing to fuzz: this namespace has interfaces besides lo: {others}", file=sys.stderr)
        return 1
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never routed, and here there is no route at all.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        code = probe.connect_ex(("192.0.2.1", 80))
    if code != errno.ENETUNREACH:
        print(f"refusing to fuzz: a public address is not unreachable here ({errno.errorcode.get(code, code)})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
