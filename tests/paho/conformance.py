"""What devices do with MQTT, tried with paho-mqtt. Usage:
    conformance.py CHECK PORT PASSWORD_TEMPLATE DEVICE
CHECK is one of keepalive0, persist-away, persist-back, clean-away,
clean-back, will, v5.
Prints one JSON line of findings."""

import json
import sys
import time

from anxin_paho import Device, ack_topic, event_topic, report, sos_json

check, port, template, device = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
password = template.replace("{id}", device)
found = {}


def stored(d, seq):
    want = f'"seq":"{seq}"'.encode()
    return d.wait_message(lambda m: m[0] == ack_topic(device)
                          and b"ACK_KIND_STORED" in m[1] and want in m[1].replace(b" ", b""))


def telemetry(seq):
    return json.dumps({"seq": seq, "kind": "EVENT_KIND_TELEMETRY", "batteryPct": 80})


if check == "keepalive0":
    # Keep-alive 0 is legal (3.1.1 §3.1.2.10): no timeout at all.
    d = Device(port, device, password, keepalive=0)
    found["connack"] = d.connect()
    found["sub"] = d.subscribe(ack_topic(device))
    found["puback"] = d.publish(event_topic(device), sos_json(1))
    found["stored"] = stored(d, 1) is not None
    time.sleep(3)
    found["still_connected"] = d.connected.is_set()
    found["puback_later"] = d.publish(event_topic(device), telemetry(2))
    found["stored_later"] = stored(d, 2) is not None
    d.close()

elif check in ("persist-away", "clean-away"):
    # Press, hear `stored`, leave: with a persistent session or a clean one.
    d = Device(port, device, password, client_id=device, clean=check == "clean-away")
    found["connack"] = d.connect()
    found["session_present"] = d.session_present()
    found["sub"] = d.subscribe(ack_topic(device))
    found["puback"] = d.publish(event_topic(device), sos_json(1))
    found["stored"] = stored(d, 1) is not None
    d.close()

elif check in ("persist-back", "clean-back"):
    # persist-back: back without subscribing again — the session remembers,
    # and what was published while the device was away comes now.
    # clean-back: a clean session remembers nothing, but "help is coming"
    # acknowledged while the device was away waits at the gateway for its
    # subscription.
    clean = check == "clean-back"
    d = Device(port, device, password, client_id=device, clean=clean)
    found["connack"] = d.connect()
    found["session_present"] = d.session_present()
    if clean:
        found["sub"] = d.subscribe(ack_topic(device))
    heard = d.wait_message(lambda m: b"ACK_KIND_ACKNOWLEDGED" in m[1])
    found["heard_acknowledged"] = heard is not None
    found["message"] = json.loads(heard[1])["message"] if heard else None
    d.close()

elif check == "will":
    d = Device(port, device, password, keepalive=1,
               will=(f"anxin/v1/dev/{device}/status", "offline"))
    found["connack"] = d.connect()
    found["puback"] = d.publish(event_topic(device), telemetry(1))
    # Silent from now on, socket open: the gateway must notice by itself.
    d.stop_pinging()
    time.sleep(4)

elif check == "v5":
    d = Device(port, device, password, client_id=device, v5=True, clean=False,
               session_expiry=300)
    found["connack"] = d.connect()
    found["sub"] = d.subscribe(ack_topic(device))
    found["puback"] = d.publish(event_topic(device), sos_json(1))
    found["stored"] = stored(d, 1) is not None
    found["qos0"] = d.publish(event_topic(device), telemetry(2), qos=0)
    found["stored_qos0"] = stored(d, 2) is not None
    d.client.unsubscribe(ack_topic(device))
    time.sleep(0.5)
    d.publish(event_topic(device), telemetry(3))
    found["stored_after_unsubscribe"] = d.wait_message(
        lambda m: b'"seq":"3"' in m[1].replace(b" ", b""), timeout=2) is not None
    d.close()
    again = Device(port, device, password, client_id=device, v5=True, clean=False,
                   session_expiry=300)
    found["reconnect_connack"] = again.connect()
    found["session_present"] = again.session_present()
    again.close()
    fresh = Device(port, device, password, client_id=device, v5=True, clean=True)
    fresh.connect()
    found["clean_start_session_present"] = fresh.session_present()
    fresh.close()

else:
    sys.exit(f"unknown check {check}")

report(found)
