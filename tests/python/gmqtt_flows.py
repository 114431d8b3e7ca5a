"""gmqtt (Gurtam's asyncio client, MQTT 5) against tern: what it relies on
(docs/flespi.md#what-the-real-clients-rely-on).

Usage: gmqtt_flows.py HOST PORT TOKEN
The token goes in as the bare user name, as gmqtt users pass their flespi token. Exits 0 when
every check passed; prints the failed check and exits 1 otherwise.
"""
import asyncio
import json
import sys
import uuid

import gmqtt

host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
run = uuid.uuid4().hex[:8]  # keeps topics and client ids of one run apart from any other


class Inbox:
    """Collects what one client receives."""

    def __init__(self, client):
        self.messages = []
        self.connack = None
        self.arrived = asyncio.Event()
        client.on_message = self.on_message
        client.on_connect = self.on_connect

    def on_message(self, client, topic, payload, qos, properties):
        self.messages.append((topic, payload, qos, properties))
        self.arrived.set()
        return 0

    def on_connect(self, client, flags, rc, properties):
        self.connack = (flags, rc, properties)

    async def wait_for(self, count, timeout=5.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.messages) < count:
            left = deadline - loop.time()
            if left <= 0:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        return self.messages


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}")
        sys.exit(1)


def user_props(properties):
    return dict(properties.get("user_property", []))


async def client(name, **kwargs):
    c = gmqtt.Client(f"{name}-{run}" if name else "", **kwargs)
    c.set_auth_credentials(token)
    inbox = Inbox(c)
    await c.connect(host, port, version=gmqtt.constants.MQTTv50)
    return c, inbox


async def settle():
    """SUBSCRIBE is fire-and-forget in gmqtt: give the broker a moment to apply it."""
    await asyncio.sleep(0.3)


async def connack_properties():
    c, inbox = await client("own")
    flags, rc, props = inbox.connack
    check(rc == 0, f"CONNACK reason {rc}")
    # mqtt.echo_client_id defaults to false: an own id is not echoed back.
    check("assigned_client_identifier" not in props,
          f"own id not echoed as Assigned Client Identifier: {props}")
    up = user_props(props)
    check("token" in up and "subscriptions" in up, f"CONNACK user properties token/subscriptions: {up}")
    t = json.loads(up["token"])
    check({"id", "cid", "access"} <= set(t), f"token JSON fields: {t}")
    check(json.loads(up["subscriptions"]) == [], f"fresh session has no subscriptions: {up}")
    await c.disconnect()


async def qos2_round_trip():
    sub, inbox = await client("q2sub")
    sub.subscribe(f"gm/{run}/q2", qos=2)
    await settle()
    pub, _ = await client("q2pub")
    pub.publish(f"gm/{run}/q2", b"exactly once", qos=2)
    msgs = await inbox.wait_for(1)
    await asyncio.sleep(0.3)  # a duplicate would arrive now
    check(len(msgs) == 1, f"one QoS 2 delivery, got {len(msgs)}")
    topic, payload, qos, props = msgs[0]
    check((topic, payload, qos) == (f"gm/{run}/q2", b"exactly once", 2), f"delivery: {msgs[0]}")
    up = user_props(props)
    check(up.get("cid", "").isdigit(), f"cid user property: {up}")
    check(float(up.get("timestamp", "0")) > 1.6e9, f"timestamp user property: {up}")
    await sub.disconnect()
    await pub.disconnect()


async def overlapping_subscriptions():
    sub, inbox = await client("overlap")
    sub.subscribe(f"gm/{run}/o/D", qos=2, subscription_identifier=21)
    sub.subscribe(f"gm/{run}/o/#", qos=1, subscription_identifier=42)
    await settle()
    pub, _ = await client("overlap-pub")
    pub.publish(f"gm/{run}/o/D", b"overlapping", qos=2)
    msgs = await inbox.wait_for(1)
    await asyncio.sleep(0.3)
    check(len(msgs) == 1, f"overlapping subscriptions deliver once, got {len(msgs)}")
    _, _, qos, props = msgs[0]
    check(qos == 2, f"delivered at the higher granted QoS, got {qos}")
    check(sorted(props.get("subscription_identifier", [])) == [21, 42],
          f"both subscription identifiers: {props}")
    await sub.disconnect()
    await pub.disconnect()


async def shared_subscription():
    a, inbox_a = await client("share-a")
    b, inbox_b = await client("share-b")
    a.subscribe(f"$share/g{run}/gm/{run}/s")
    b.subscribe(f"$share/g{run}/gm/{run}/s")
    await settle()
    pub, _ = await client("share-pub")
    count = 40
    for i in range(count):
        pub.publish(f"gm/{run}/s", f"m{i}", qos=1)
    for _ in range(50):
        if len(inbox_a.messages) + len(inbox_b.messages) >= count:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    got = sorted(m[1] for m in inbox_a.messages + inbox_b.messages)
    check(got == sorted(f"m{i}".encode() for i in range(count)),
          f"each shared message delivered exactly once: {len(got)} deliveries")
    check(inbox_a.messages and inbox_b.messages,
          f"both members served: {len(inbox_a.messages)} / {len(inbox_b.messages)}")
    for c in (a, b, pub):
        await c.disconnect()


async def wills():
    watcher, inbox = await client("will-watch")
    watcher.subscribe(f"gm/{run}/will/+")
    await settle()
    for reason, name in ((4, "with-will"), (0, "normal")):
        will = gmqtt.Message(f"gm/{run}/will/{name}", f"{name} gone")
        c, _ = await client(f"will-{name}", will_message=will)
        await c.disconnect(reason_code=reason)
    msgs = await inbox.wait_for(1)
    await asyncio.sleep(0.5)  # a will after a normal DISCONNECT would arrive now
    check([m[0] for m in msgs] == [f"gm/{run}/will/with-will"],
          f"only DISCONNECT 0x04 publishes the will: {[m[0] for m in msgs]}")
    await watcher.disconnect()


async def bad_token_refused():
    c = gmqtt.Client(f"bad-{run}")
    c.set_auth_credentials("x" * 64)
    try:
        await c.connect(host, port, version=gmqtt.constants.MQTTv50)
    except Exception as e:  # gmqtt raises MQTTConnectError with the reason code
        check("134" in str(e) or "0x86" in str(e) or "user name or password" in str(e).lower(),
              f"refused with 0x86: {e}")
        return
    check(False, "an unknown token was accepted")


async def main():
    await connack_properties()
    await qos2_round_trip()
    await overlapping_subscriptions()
    await shared_subscription()
    await wills()
    await bad_token_refused()
    print("ok")


asyncio.run(asyncio.wait_for(main(), 60))
