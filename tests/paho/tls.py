"""The device front over TLS, tried with paho-mqtt. Usage:
    tls.py PORT CA_PEM PLAIN_PORT PASSWORD_TEMPLATE CERT_DIR
Devices: btn-pw logs in with a password over TLS; btn-cert with a client
certificate (CERT_DIR/device-btn-cert.pem/.key) and no password; a
certificate from another CA (CERT_DIR/device-rogue.pem) is refused."""

import os
import sys

from anxin_paho import Device, ack_topic, event_topic, report, sos_json

port, ca, plain_port, template, certs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
found = {}


def stored(d, device):
    return d.wait_message(lambda m: m[0] == ack_topic(device) and b"ACK_KIND_STORED" in m[1]) is not None


def cert(name):
    return {"ca_certs": ca, "certfile": os.path.join(certs, f"{name}.pem"),
            "keyfile": os.path.join(certs, f"{name}.key")}


# Server certificate verified against the CA; a password as usual.
d = Device(port, "btn-pw", template.replace("{id}", "btn-pw"), tls={"ca_certs": ca})
found["password_connack"] = d.connect()
d.subscribe(ack_topic("btn-pw"))
found["password_puback"] = d.publish(event_topic("btn-pw"), sos_json(1))
found["password_stored"] = stored(d, "btn-pw")
d.close()

# The client certificate is the credential: no username, no password.
d = Device(port, None, None, client_id="btn-cert-client", tls=cert("device-btn-cert"))
found["cert_connack"] = d.connect()
d.subscribe(ack_topic("btn-cert"))
found["cert_puback"] = d.publish(event_topic("btn-cert"), sos_json(1))
found["cert_stored"] = stored(d, "btn-cert")
# Its identity is the certificate's: another device's topics are refused.
found["cert_other_sub"] = d.subscribe(ack_topic("btn-pw"))
d.close()

# A certificate for btn-cert does not log in as btn-pw.
d = Device(port, "btn-pw", template.replace("{id}", "btn-pw"), tls=cert("device-btn-cert"))
found["cert_mismatch_connack"] = d.connect()
d.close()

# A certificate from another CA: the handshake fails.
d = Device(port, None, None, client_id="rogue", tls=cert("device-rogue"))
found["rogue_connack"] = d.connect()
d.close()

# Plain MQTT: the plain port is off, and the TLS port does not speak it.
d = Device(plain_port, "btn-pw", template.replace("{id}", "btn-pw"))
found["plain_port_connack"] = d.connect()
d.close()
d = Device(port, "btn-pw", template.replace("{id}", "btn-pw"))
found["plain_on_tls_port_connack"] = d.connect()
d.close()
report(found)
