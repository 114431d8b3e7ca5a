"""Probes a deployed tern (a container, the Debian package) the way a user's client would.

Usage:
  deploy_probe.py ws HOST PORT KEY        MQTT 5 over WebSocket (path /mqtt): subscribe, publish,
                                          receive; exit 0 when the message came back
  deploy_probe.py shutdown HOST PORT KEY  MQTT 5 over TCP: print "connected", then wait for the
                                          broker to close; print the DISCONNECT reason code and
                                          exit 0 when it is 0x8B (server shutting down)
  deploy_probe.py http METHOD URL KEY [BODY]
                                          a REST call with the token; prints the status and the
                                          body; exit 0 on 2xx
"""

import sys
import threading
import urllib.error
import urllib.request
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes


def client(transport="tcp", key=""):
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"probe-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
        transport=transport,
    )
    c.username_pw_set(key)
    return c


def ws(host, port, key):
    c = client("websockets", key)
    c.ws_set_options(path="/mqtt")
    got = threading.Event()
    subscribed = threading.Event()
    c.on_message = lambda c_, u, m: got.set() if m.payload == b"over websocket" else None
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(host, int(port), keepalive=30)
    c.loop_start()
    c.subscribe("probe/ws", qos=1)
    if not subscribed.wait(10):
        print("no SUBACK over WebSocket")
        return 1
    c.publish("probe/ws", b"over websocket", qos=1)
    ok = got.wait(10)
    c.disconnect()
    c.loop_stop()
    print("websocket round trip ok" if ok else "no message over WebSocket")
    return 0 if ok else 1


def shutdown(host, port, key):
    c = client("tcp", key)
    connected = threading.Event()
    closed = threading.Event()
    reason = {}

    def on_connect(c_, u, flags, rc, props):
        if rc == 0:
            connected.set()

    def on_disconnect(c_, u, flags, rc, props):
        reason["rc"] = rc.value if hasattr(rc, "value") else int(rc)
        closed.set()

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    c.connect(host, int(port), keepalive=60, properties=props)
    c.loop_start()
    if not connected.wait(10):
        print("not connected")
        return 1
    print("connected", flush=True)
    closed.wait(60)
    c.loop_stop()
    rc = reason.get("rc")
    print(f"disconnect reason {rc:#04x}" if rc is not None else "never disconnected", flush=True)
    return 0 if rc == 0x8B else 1


def http(method, url, key, body=None):
    req = urllib.request.Request(
        url,
        method=method,
        data=body.encode() if body is not None else None,
        headers={"Authorization": f"FlespiToken {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            print(r.status)
            print(r.read().decode())
            return 0
    except urllib.error.HTTPError as e:
        print(e.code)
        print(e.read().decode())
        return 1


def main(argv):
    if len(argv) >= 4 and argv[0] == "ws":
        return ws(*argv[1:4])
    if len(argv) >= 4 and argv[0] == "shutdown":
        return shutdown(*argv[1:4])
    if len(argv) >= 4 and argv[0] == "http":
        return http(*argv[1:5])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
