"""paho-mqtt against tern: subscribe, publish at QoS 0/1/2, receive, check v5 properties.

Usage: paho_roundtrip.py HOST PORT VERSION(311|5)
Exits 0 when every check passed; prints what failed otherwise.
"""
import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, version = sys.argv[1], int(sys.argv[2]), sys.argv[3]
v5 = version == "5"
protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311

received = []
done = threading.Event()
connack = {}
subscribed = threading.Event()


def on_connect(client, userdata, flags, reason_code, properties):
    connack["rc"] = reason_code
    connack["props"] = properties
    client.subscribe("paho/+/t", qos=2)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    subscribed.set()


def on_message(client, userdata, msg):
    received.append(msg)
    if len(received) == 3:
        done.set()


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-{version}", protocol=protocol)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect(host, port, keepalive=30)
client.loop_start()
if not subscribed.wait(5):
    print("no SUBACK")
    sys.exit(1)

pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-pub-{version}", protocol=protocol)
pub.connect(host, port, keepalive=30)
pub.loop_start()
for qos in (0, 1, 2):
    props = None
    if v5:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", f"v{qos}")]
    info = pub.publish(f"paho/{qos}/t", payload=f"q{qos}".encode(), qos=qos, properties=props)
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
    # flespi's CONNACK user properties (docs/flespi.md#connecting-and-authorization): the token and
    # the resumed subscriptions.
    connack_user = dict(getattr(connack["props"], "UserProperty", []))
    try:
        token = json.loads(connack_user["token"])
        if not all(k in token for k in ("id", "cid", "access")):
            failures.append(f"CONNACK token lacks id/cid/access: {token}")
        if json.loads(connack_user["subscriptions"]) != []:
            failures.append(f"a new session has subscriptions: {connack_user['subscriptions']}")
    except (KeyError, ValueError) as e:
        failures.append(f"CONNACK user properties token/subscriptions: {e!r} in {connack_user}")
    for m in received:
        user = dict(m.properties.UserProperty)
        if "timestamp" not in user or "cid" not in user:
            failures.append(f"missing cid/timestamp on {m.topic}: {user}")
        if not user.get("k", "").startswith("v"):
            failures.append(f"user property not forwarded on {m.topic}: {user}")
pub.disconnect()
client.disconnect()
pub.loop_stop()
client.loop_stop()
if failures:
    print("; ".join(failures))
    sys.exit(1)
print("ok")
