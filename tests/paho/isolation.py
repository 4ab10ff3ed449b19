"""Device isolation, tried with paho-mqtt as an integrator (or an attacker
with one device's valid credentials) would. Usage:
    isolation.py PORT PASSWORD_TEMPLATE
Devices btn-1 (the attacker) and btn-2 (the victim) are registered at the
gateway with password PASSWORD_TEMPLATE.replace("{id}", id)."""

import sys
import time

from anxin_paho import Device, ack_topic, event_topic, report, sos_json

port = int(sys.argv[1])
template = sys.argv[2]


def password(device):
    return template.replace("{id}", device)


findings = {}

# The victim listens for its acks in both encodings.
victim = Device(port, "btn-2", password("btn-2"), client_id="victim")
findings["victim_connack"] = victim.connect()
findings["victim_sub"] = [victim.subscribe(ack_topic("btn-2")),
                          victim.subscribe(ack_topic("btn-2", json_=False))]

# Login refusals (3.1.1 and 5).
for name, user, pw, v5 in [
    ("wrong_password_v311", "btn-1", "not-my-password", False),
    ("unknown_device_v311", "ghost", password("ghost"), False),
    ("no_credentials_v311", None, None, False),
    ("other_devices_password_v311", "btn-1", password("btn-2"), False),
    ("wrong_password_v5", "btn-1", "not-my-password", True),
    ("unknown_device_v5", "ghost", password("ghost"), True),
]:
    d = Device(port, user, pw, client_id=f"login-{name}", v5=v5)
    findings[name] = d.connect()
    d.close()

# The attacker logs in with its own valid credentials, MQTT 3.1.1.
attacker = Device(port, "btn-1", password("btn-1"), client_id="attacker")
findings["attacker_connack"] = attacker.connect()
subs = {}
for topic in ["#", "+", "anxin/#", "anxin/v1/dev/+/ack", "anxin/v1/dev/+/ack/json",
              "anxin/v1/dev/+/event/json", ack_topic("btn-2"), ack_topic("btn-2", False),
              event_topic("btn-2"), "anxin/v1/gw/local-alarm", "$SYS/#"]:
    subs[topic] = attacker.subscribe(topic)
findings["attacker_v311_subscriptions"] = subs
findings["attacker_own_ack_sub"] = attacker.subscribe(ack_topic("btn-1"))

# A forged "help is coming" for the victim: 3.1.1 has no refusal code, so
# the gateway closes the connection.
forged = '{"deviceId":"btn-2","seq":"1","kind":"ACK_KIND_ACKNOWLEDGED","message":"help is coming"}'
findings["forged_ack_v311_puback"] = attacker.publish(ack_topic("btn-2"), forged)
findings["forged_ack_v311_disconnected"] = attacker.wait_disconnected(5)
attacker.close()

# An SOS in the victim's name.
attacker = Device(port, "btn-1", password("btn-1"), client_id="attacker")
attacker.connect()
findings["forged_sos_v311_puback"] = attacker.publish(event_topic("btn-2"), sos_json(777))
findings["forged_sos_v311_disconnected"] = attacker.wait_disconnected(5)
attacker.close()

# MQTT 5: refused per packet with reason 0x87, the connection stays.
attacker5 = Device(port, "btn-1", password("btn-1"), client_id="attacker5", v5=True)
findings["attacker_v5_connack"] = attacker5.connect()
findings["attacker_v5_sub_hash"] = attacker5.subscribe("#")
findings["attacker_v5_sub_victim_ack"] = attacker5.subscribe(ack_topic("btn-2"))
findings["forged_ack_v5_puback"] = attacker5.publish(ack_topic("btn-2"), forged)
findings["forged_sos_v5_puback"] = attacker5.publish(event_topic("btn-2"), sos_json(778))
findings["forged_status_v5_puback"] = attacker5.publish("anxin/v1/dev/btn-2/status", "offline")
findings["attacker_v5_still_connected"] = attacker5.connected.is_set()

# The victim presses for real: it hears its own stored ack; the attacker,
# who tried every way to listen, hears nothing of it.
findings["victim_sos_puback"] = victim.publish(event_topic("btn-2"), sos_json(1))
stored = victim.wait_message(lambda m: m[0] == ack_topic("btn-2") and b"ACK_KIND_STORED" in m[1])
findings["victim_heard_stored"] = stored is not None
time.sleep(1.0)
findings["victim_heard_forged"] = any(b"help is coming" in p for _, p in victim.messages)
findings["victim_topics"] = sorted({t for t, _ in victim.messages})
findings["attacker_v5_heard"] = [t for t, _ in attacker5.messages]
attacker5.close()
victim.close()
report(findings)
