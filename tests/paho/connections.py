"""One device, two paho connections with distinct client ids (an app and a
test console): both subscribe to the device's acks and each publishes; each
must hear every `stored` ack, then "help is coming" once the test has
acknowledged the alert. A third connection reusing the first's client id
takes its session over. Usage:
    connections.py PORT PASSWORD_TEMPLATE DEVICE
Prints one JSON line of findings."""

import json
import sys

from anxin_paho import Device, ack_topic, event_topic, report, sos_json

port, template, device = int(sys.argv[1]), sys.argv[2], sys.argv[3]
password = template.replace("{id}", device)
found = {}


def stored(d, seq):
    want = f'"seq":"{seq}"'.encode()
    return d.wait_message(lambda m: m[0] == ack_topic(device)
                          and b"ACK_KIND_STORED" in m[1] and want in m[1].replace(b" ", b"")) is not None


app = Device(port, device, password, client_id=f"{device}-app")
console = Device(port, device, password, client_id=f"{device}-console")
found["connack"] = [app.connect(), console.connect()]
found["sub"] = [app.subscribe(ack_topic(device)), console.subscribe(ack_topic(device))]
found["puback_sos"] = app.publish(event_topic(device), sos_json(1))
found["stored_1"] = [stored(app, 1), stored(console, 1)]
found["puback_telemetry"] = console.publish(
    event_topic(device), json.dumps({"seq": 2, "kind": "EVENT_KIND_TELEMETRY", "batteryPct": 80}))
found["stored_2"] = [stored(app, 2), stored(console, 2)]
print("waiting for help is coming", flush=True)
heard = [d.wait_message(lambda m: b"ACK_KIND_ACKNOWLEDGED" in m[1], timeout=60) for d in (app, console)]
found["acknowledged"] = [json.loads(h[1])["message"] if h else None for h in heard]
found["both_still_connected"] = app.connected.is_set() and console.connected.is_set()
# The same client id again: the app's session is taken over, the console's
# connection stays.
again = Device(port, device, password, client_id=f"{device}-app")
found["again_connack"] = again.connect()
found["app_taken_over"] = app.wait_disconnected()
found["console_stays"] = console.connected.is_set()
for d in (again, console):
    d.close()
report(found)
