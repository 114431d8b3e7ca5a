"""paho-mqtt against tern over WebSocket: subscribe, publish at QoS 0/1/2, receive, check v5
properties, with transport="websockets" on a given path, optionally over TLS (wss).

Usage: paho_websockets.py HOST PORT VERSION(311|5) PATH [CAFILE]
With CAFILE the connection is wss and the server certificate must be valid for HOST.
Exits 0 when every check passed; prints what failed otherwise.
"""
import ssl
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, version, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
cafile = sys.argv[5] if len(sys.argv) > 5 else None
v5 = version == "5"
protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
tag = f"{version}{'s' if cafile else ''}{path.replace('/', '_')}"

received = []
done = threading.Event()
subscribed = threading.Event()
connack = {}


def make(client_id):
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        transport="websockets",
    )
    c.ws_set_options(path=path)
    if cafile:
        c.tls_set(ca_certs=cafile, cert_reqs=ssl.CERT_REQUIRED)
    return c


def on_connect(client, userdata, flags, reason_code, properties):
    connack["rc"] = reason_code
    connack["props"] = properties
    client.subscribe(f"pahows/{tag}/+", qos=2)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    subscribed.set()


def on_message(client, userdata, msg):
    received.append(msg)
    if len(received) == 3:
        done.set()


sub = make(f"paho-ws-sub-{tag}")
sub.on_connect = on_connect
sub.on_subscribe = on_subscribe
sub.on_message = on_message
sub.connect(host, port, keepalive=30)
sub.loop_start()
if not subscribed.wait(5):
    print(f"no SUBACK (CONNACK {connack.get('rc')})")
    sys.exit(1)

pub = make(f"paho-ws-pub-{tag}")
pub.connect(host, port, keepalive=30)
pub.loop_start()
for qos in (0, 1, 2):
    props = None
    if v5:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", f"v{qos}")]
    info = pub.publish(f"pahows/{tag}/{qos}", payload=f"q{qos}".encode(), qos=qos, properties=props)
    info.wait_for_publish(5)

if not done.wait(5):
    print(f"received only {len(received)} messages")
    sys.exit(1)

failures = []
payloads = sorted(m.payload for m in received)
if payloads != [b"q0", b"q1", b"q2"]:
    failures.append(f"payloads {payloads}")
if v5:
    # mqtt.echo_client_id defaults to false: the client's own id is not echoed back.
    if "AssignedClientIdentifier" in connack["props"].json():
        failures.append("CONNACK echoes the client's own id as Assigned Client Identifier")
    for m in received:
        user = dict(m.properties.UserProperty)
        if "timestamp" not in user or "cid" not in user:
            failures.append(f"missing cid/timestamp on {m.topic}: {user}")
pub.disconnect()
sub.disconnect()
pub.loop_stop()
sub.loop_stop()
if failures:
    print("; ".join(failures))
    sys.exit(1)
print("ok")
