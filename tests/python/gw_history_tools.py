"""Two of flespi's Python example tools, reduced to their REST calls against tern.

convert BASE TOKEN DEVICE
    message-converter: GET the device's messages with `fields` and, as the tool does, the
    same list as `filter` (only messages that have every field); prints the answer.
reregister BASE TOKEN SRC DST FROM TO
    re-register: GET SRC's messages with `{from, to}` as a JSON body (no query), then POST
    them to DST in batches of 100; prints {"read": n, "statuses": [...]}.
"""

import json
import sys
import urllib.parse
import urllib.request


def call(method, url, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "FlespiToken " + token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=20) as resp:
        return resp.status, json.loads(resp.read() or b"null")


def convert(base, token, device):
    fields = "timestamp,position.latitude,position.longitude"
    data = json.dumps({"fields": fields, "filter": fields})
    url = "%s/gw/devices/%s/messages?data=%s" % (base, device, urllib.parse.quote(data))
    _, answer = call("GET", url, token)
    print(json.dumps(answer))


def reregister(base, token, src, dst, frm, to):
    url = "%s/gw/devices/%s/messages" % (base, src)
    _, answer = call("GET", url, token, {"from": float(frm), "to": float(to)})
    messages = answer["result"]
    statuses = []
    for i in range(0, len(messages), 100):
        status, _ = call(
            "POST", "%s/gw/devices/%s/messages" % (base, dst), token, messages[i : i + 100]
        )
        statuses.append(status)
    print(json.dumps({"read": len(messages), "statuses": statuses}))


if __name__ == "__main__":
    if sys.argv[1] == "convert":
        convert(*sys.argv[2:5])
    else:
        reregister(*sys.argv[2:8])
