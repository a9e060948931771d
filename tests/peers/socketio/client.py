"""A python-socketio client with its default transports (long-polling first,
then the upgrade to WebSocket): `python client.py URL`. It connects (the
engine upgrades inside connect), calls `echo` with an ack, checks the ack and
the server's `echoed` event, prints `ok transport=websocket` and exits 0.
Any error, or no result within 10 s, is one line on stderr and exit 1."""

import logging
import os
import sys
import threading

import socketio

TIMEOUT_S = 10


def fail(msg):
    print(f"python-socketio client: {msg}", file=sys.stderr, flush=True)
    os._exit(1)


def main(url):
    # A failed upgrade is only a warning from engineio: show it.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    watchdog = threading.Timer(TIMEOUT_S, fail, [f"no result after {TIMEOUT_S} s"])
    watchdog.daemon = True
    watchdog.start()

    # Default options but one: fail at once instead of reconnecting.
    sio = socketio.Client(reconnection=False)
    echoed = []
    got_echoed = threading.Event()

    @sio.on("echoed")
    def on_echoed(data):
        echoed.append(data)
        got_echoed.set()

    try:
        sio.connect(url, wait_timeout=TIMEOUT_S)
    except socketio.exceptions.ConnectionError as e:
        fail(f"connect: {e}")
    payload = {"text": "héllo ✓", "n": 42, "bytes": b"\x01\x02\x03"}
    ack = sio.call("echo", payload, timeout=5)
    if ack != {"payload": payload, "transport": "websocket"}:
        fail(f"the ack: {ack!r}")
    if not got_echoed.wait(5) or echoed[0] != payload:
        fail(f"the echoed event: {echoed!r}")
    print(f"ok transport={sio.transport()}", flush=True)
    sio.disconnect()
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: python client.py URL")
    main(sys.argv[1])
