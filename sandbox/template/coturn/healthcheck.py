"""coturn healthcheck: the turnserver process is alive, its TCP port accepts a connection and a
STUN Binding request over UDP gets a Binding success response. Exit 0 when healthy."""

import os
import socket
import struct
import sys
from pathlib import Path

PORT = int(os.environ.get("TURN_PORT", "53478"))
HOST = "127.0.0.1"
MAGIC_COOKIE = 0x2112A442


def turnserver_alive() -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "turnserver":
                    return True
            except OSError:
                continue
    return False


def tcp_open() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=2):
            return True
    except OSError:
        return False


def stun_binding() -> bool:
    txid = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, MAGIC_COOKIE) + txid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        try:
            s.sendto(request, (HOST, PORT))
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
    if len(data) < 20:
        return False
    msg_type, _length, cookie = struct.unpack("!HHI", data[:8])
    return msg_type == 0x0101 and cookie == MAGIC_COOKIE and data[8:20] == txid


def main() -> int:
    checks = {"process": turnserver_alive(), "tcp": tcp_open(), "udp-stun": stun_binding()}
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        print("unhealthy: " + ", ".join(failed))
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
