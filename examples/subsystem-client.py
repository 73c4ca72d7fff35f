#!/usr/bin/env python3
"""A baton subsystem: registers a level on the agent's subsystem socket, prints
every transition notification and acknowledges it (see docs/subsystem-api.md).

    subsystem-client.py /run/baton/prod-subsys.sock db 30 [--delay-ms 500]

Exit status: 0 after deregistering (--exit-after, Ctrl-C) or when the agent
closed the connection; 1 on a usage, connection or protocol error; 2 when the
agent terminated the subsystem (clustering is ending on this node, S0.2); 3
after reporting a failure (--fail-after).

Python 3 standard library only.
"""

import argparse
import json
import select
import signal
import socket
import sys
import time

EXIT_OK, EXIT_ERROR, EXIT_TERMINATED, EXIT_FAILED = 0, 1, 2, 3


def log(*args):
    print(*args, flush=True)


def describe(tr, step):
    return "node {} incarnation {} {} level {} barrier {}".format(
        tr["node"], tr["incarnation"], tr["kind"], step["level"], step["barrier"])


class Client:
    def __init__(self, path, wake):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.wake = wake  # readable when a signal arrived
        self.buf = b""

    def send(self, obj):
        self.sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def lines(self, timeout):
        """The complete lines received within `timeout` seconds (None: no limit).
        [] on timeout or signal; EOFError when the agent closed the connection."""
        if b"\n" not in self.buf:
            r, _, _ = select.select([self.sock, self.wake], [], [], timeout)
            if self.wake in r:
                self.wake.recv(64)
            if self.sock not in r:
                return []
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data
        *done, self.buf = self.buf.split(b"\n")
        return [json.loads(l) for l in done if l.strip()]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("socket", help="the agent's subsystem socket, <run_dir>/<cluster>-subsys.sock")
    p.add_argument("name", help="a name for this subsystem (logs, baton status)")
    p.add_argument("level", type=int, help="the level to register at (1..65535)")
    p.add_argument("--barriers", default="1,1,1", metavar="J,L,F",
                   help="barriers per transition: join,leave,forced_leave (default 1,1,1)")
    p.add_argument("--ack-timeout-ms", type=int, default=5000,
                   help="the agent treats a notification unacknowledged this long as a failure (default 5000)")
    p.add_argument("--delay-ms", type=int, default=0, help="wait this long before acknowledging each notification")
    p.add_argument("--fail-after", type=int, metavar="N",
                   help="on the Nth notification, report a critical failure (component) instead of acknowledging")
    p.add_argument("--exit-after", type=int, metavar="N", help="deregister and exit after acknowledging N notifications")
    a = p.parse_args()
    try:
        join, leave, forced = (int(x) for x in a.barriers.split(","))
    except ValueError:
        p.error("--barriers takes three integers: join,leave,forced_leave")

    # Signals wake the select() up through this socket pair.
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    stopping = []
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))

    try:
        c = Client(a.socket, wake_r)
    except OSError as e:
        print("cannot connect to {}: {} (is `baton run` running?)".format(a.socket, e), file=sys.stderr)
        return EXIT_ERROR

    c.send({"op": "register", "name": a.name, "level": a.level,
            "barriers": {"join": join, "leave": leave, "forced_leave": forced},
            "ack_timeout_ms": a.ack_timeout_ms})

    notified = 0
    acked = 0
    failed = False
    registered = False
    deregistering = None  # when "deregister" was sent
    # Acks waiting for their delay: (due time, transition, step).
    due = []
    while True:
        status = EXIT_FAILED if failed else EXIT_OK
        done = a.exit_after is not None and acked >= a.exit_after and not due
        if (stopping or done) and deregistering is None:
            # Lines are handled in order: this works even before "registered" came back.
            due.clear()
            c.send({"op": "deregister"})
            deregistering = time.monotonic()
        if deregistering is not None:
            # Wait for "deregistered" and the end of the connection, not forever.
            timeout = deregistering + 2.0 - time.monotonic()
            if timeout <= 0:
                return status
        else:
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, tr, step = due.pop(0)
                c.send({"op": "ack", "transition": tr, "step": step})
                acked += 1
                log("acked    " + describe(tr, step))
            if a.exit_after is not None and acked >= a.exit_after and not due:
                continue
            timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
        try:
            msgs = c.lines(timeout)
        except EOFError:
            log("the agent closed the connection")
            return status
        except (OSError, ValueError) as e:
            print("protocol error: {}".format(e), file=sys.stderr)
            return EXIT_ERROR
        for m in msgs:
            ev = m.get("ev")
            if ev == "registered":
                registered = True
                log("registered as subsystem {} at level {}".format(m["subsystem"], a.level))
            elif ev == "notify":
                tr, step = m["transition"], m["step"]
                notified += 1
                states = ", ".join("{}={}".format(n, s) for n, s in m["states"].items())
                log("notified {}; states: {}".format(describe(tr, step), states))
                if tr["kind"] == "forced-leave":
                    # Table 1: a forced leave aborts any graceful join/leave of that node.
                    for d in [d for d in due if d[1]["node"] == tr["node"]]:
                        due.remove(d)
                        log("aborted  " + describe(d[1], d[2]))
                if a.fail_after is not None and notified >= a.fail_after and not failed:
                    c.send({"op": "fail", "reason": "component"})
                    failed = True
                    due.clear()
                    log("reported a component failure")
                if failed or deregistering is not None:
                    continue
                due.append((time.monotonic() + a.delay_ms / 1000.0, tr, step))
            elif ev == "terminate":
                print("terminated by the agent: clustering is ending ({})".format(m.get("reason")), file=sys.stderr)
                return EXIT_TERMINATED
            elif ev == "deregistered":
                log("deregistered")
            elif ev == "error":
                print("agent error: {}".format(m.get("message")), file=sys.stderr)
                if not registered:
                    return EXIT_ERROR
            else:
                log("unknown event: {}".format(m))


if __name__ == "__main__":
    sys.exit(main())
