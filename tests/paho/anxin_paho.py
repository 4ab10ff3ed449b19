"""A small synchronous wrapper around paho-mqtt (what integrators use) for
Anxin's device-front tests: connect, subscribe, publish, and wait for what
comes back, with timeouts. Each script prints one JSON line of findings; the
Rust test that runs it asserts on them."""

import json
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

PATIENCE = 10.0


class Device:
    def __init__(self, port, username, password, client_id=None, v5=False,
                 keepalive=60, clean=True, will=None, session_expiry=None, tls=None):
        self.port = port
        self.v5 = v5
        self.messages = []
        self.connack = None
        self.suback = {}
        self.puback = {}
        self.disconnected = threading.Event()
        self.disconnect_reason = None
        self.connected = threading.Event()
        self.lock = threading.Condition()
        kwargs = dict(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                      client_id=client_id or username or "",
                      protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        if not v5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(**kwargs)
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            # tls: ca_certs, and certfile/keyfile for a client certificate.
            self.client.tls_set(**tls)
        if will is not None:
            topic, payload = will
            self.client.will_set(topic, payload, qos=1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        # Tests decide when to reconnect.
        self.client.reconnect_delay_set(3600, 3600)

    # callbacks (paho's network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.lock:
            self.connack = (reason_code.value, bool(flags.session_present))
            self.lock.notify_all()
        if reason_code.value == 0:
            self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.lock:
            self.suback[mid] = [rc.value for rc in reason_codes]
            self.lock.notify_all()

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload)))
            self.lock.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            self.puback[mid] = reason_code.value
            self.lock.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.lock:
            self.disconnect_reason = reason_code.value
            self.lock.notify_all()
        self.connected.clear()
        self.disconnected.set()

    def _wait(self, predicate, timeout=PATIENCE):
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)
            return True

    # actions
    def connect(self):
        """Returns the CONNACK code (0 = accepted), None if none came, or
        the exception's name if the connection (or TLS handshake) failed."""
        try:
            return self._connect()
        except Exception as err:  # refused socket, TLS failure
            return type(err).__name__

    def _connect(self):
        self.disconnected.clear()
        self.connack = None
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            if self.session_expiry is not None:
                props.SessionExpiryInterval = self.session_expiry
            self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive,
                                clean_start=self.clean, properties=props)
        else:
            self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive)
        self.client.loop_start()
        self._wait(lambda: self.connack is not None or self.disconnected.is_set())
        return None if self.connack is None else self.connack[0]

    def session_present(self):
        return self.connack is not None and self.connack[1]

    def subscribe(self, topic, qos=1):
        """Returns the granted codes (0/1 granted; >= 0x80 refused)."""
        result, mid = self.client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            return None
        self._wait(lambda: mid in self.suback or self.disconnected.is_set())
        return self.suback.get(mid)

    def publish(self, topic, payload, qos=1, wait=True):
        """Returns the PUBACK reason (0 ok; v5 may say 0x87), or None if the
        connection went away instead."""
        info = self.client.publish(topic, payload, qos=qos)
        if qos == 0 or not wait:
            return 0
        self._wait(lambda: info.mid in self.puback or self.disconnected.is_set())
        return self.puback.get(info.mid)

    def wait_message(self, predicate, timeout=PATIENCE):
        found = []

        def seen():
            for m in self.messages:
                if predicate(m):
                    found.append(m)
                    return True
            return False
        self._wait(seen, timeout)
        return found[0] if found else None

    def wait_disconnected(self, timeout=PATIENCE):
        return self.disconnected.wait(timeout)

    def drop(self):
        """Goes away without DISCONNECT (the socket closes): the will fires."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def stop_pinging(self):
        """Stays connected but silent: the keep-alive expires."""
        self.client.loop_stop()

    def close(self):
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def sos_json(seq):
    return json.dumps({"seq": seq, "kind": "EVENT_KIND_SOS", "batteryPct": 80})


def ack_topic(device, json_=True):
    return f"anxin/v1/dev/{device}/ack" + ("/json" if json_ else "")


def event_topic(device, json_=True):
    return f"anxin/v1/dev/{device}/event" + ("/json" if json_ else "")


def report(findings):
    print(json.dumps(findings), flush=True)
