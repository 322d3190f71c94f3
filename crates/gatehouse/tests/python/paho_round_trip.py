"""paho-mqtt (v2 callback API) against a running Gatehouse over mutual TLS.

A subscriber and a publisher, each with its own device certificate, exchange one QoS 1
message. Over MQTT 5.0 the message carries user properties, a response topic, correlation
data, a content type and a payload format indicator, which the subscriber must receive
unchanged; the subscriber then answers on the response topic with the same correlation
data, as request/response over MQTT 5.0 works.

Run by crates/gatehouse/tests/external_clients.rs. Exit status: 0 on success, 1 on a
failed check (the reason on stderr), 77 when paho-mqtt is not installed.
"""

import argparse
import json
import sys
import threading

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError:
    print("paho-mqtt is not installed", file=sys.stderr)
    sys.exit(77)

WAIT = 15.0


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


class Peer:
    """One MQTT client with events for what the test waits on."""

    def __init__(self, args, device, cert, key):
        protocol = mqtt.MQTTv5 if args.protocol == "5" else mqtt.MQTTv311
        self.v5 = protocol == mqtt.MQTTv5
        kwargs = {} if self.v5 else {"clean_session": True}
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=device,
            protocol=protocol,
            **kwargs,
        )
        self.client.tls_set(ca_certs=args.ca, certfile=cert, keyfile=key)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.received = threading.Event()
        self.connect_reason = None
        self.suback = None
        self.messages = []
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(args.host, int(args.port), keepalive=30)
        self.client.loop_start()
        check(self.connected.wait(WAIT), f"{device}: no CONNACK")
        check(
            not self.connect_reason.is_failure,
            f"{device}: connection refused: {self.connect_reason}",
        )

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connect_reason = reason_code
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.suback = reason_codes
        self.subscribed.set()

    def _on_message(self, client, userdata, message):
        self.messages.append(message)
        self.received.set()

    def subscribe(self, topic):
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        check(self.subscribed.wait(WAIT), f"no SUBACK for {topic}")
        check(
            all(not rc.is_failure for rc in self.suback),
            f"subscription to {topic} refused: {self.suback}",
        )

    def wait_message(self):
        check(self.received.wait(WAIT), "no message arrived")
        self.received.clear()
        return self.messages.pop(0)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def main():
    parser = argparse.ArgumentParser()
    for name in (
        "host",
        "port",
        "ca",
        "sub-id",
        "sub-cert",
        "sub-key",
        "pub-id",
        "pub-cert",
        "pub-key",
        "topic",
    ):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--protocol", choices=["5", "311"], required=True)
    args = parser.parse_args()

    sub = Peer(args, args.sub_id, args.sub_cert, args.sub_key)
    pub = Peer(args, args.pub_id, args.pub_cert, args.pub_key)
    reply_topic = args.topic + "/reply"
    sub.subscribe(args.topic)
    if sub.v5:
        pub.subscribe(reply_topic)

    payload = json.dumps({"temperature": 21.5}).encode()
    properties = None
    if sub.v5:
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = [("site", "plant-a"), ("unit", "celsius")]
        properties.ResponseTopic = reply_topic
        properties.CorrelationData = b"\x00\x01request-42"
        properties.ContentType = "application/json"
        properties.PayloadFormatIndicator = 1
    info = pub.client.publish(args.topic, payload, qos=1, properties=properties)
    info.wait_for_publish(WAIT)
    check(info.is_published(), "publish not acknowledged")

    message = sub.wait_message()
    check(message.topic == args.topic, f"topic {message.topic!r}")
    check(message.payload == payload, f"payload {message.payload!r}")
    check(message.qos == 1, f"delivered at QoS {message.qos}")
    summary = {"protocol": args.protocol, "topic": message.topic, "qos": message.qos}

    if sub.v5:
        got = message.properties
        user = list(getattr(got, "UserProperty", []))
        check(
            user == [("site", "plant-a"), ("unit", "celsius")],
            f"user properties {user!r}",
        )
        check(
            getattr(got, "ResponseTopic", None) == reply_topic,
            f"response topic {getattr(got, 'ResponseTopic', None)!r}",
        )
        check(
            getattr(got, "CorrelationData", None) == b"\x00\x01request-42",
            f"correlation data {getattr(got, 'CorrelationData', None)!r}",
        )
        check(
            getattr(got, "ContentType", None) == "application/json",
            f"content type {getattr(got, 'ContentType', None)!r}",
        )
        check(
            getattr(got, "PayloadFormatIndicator", None) == 1,
            f"payload format {getattr(got, 'PayloadFormatIndicator', None)!r}",
        )
        # Answer the request where it asked, with its correlation data.
        answer = Properties(PacketTypes.PUBLISH)
        answer.CorrelationData = got.CorrelationData
        info = sub.client.publish(got.ResponseTopic, b"ack", qos=1, properties=answer)
        info.wait_for_publish(WAIT)
        reply = pub.wait_message()
        check(reply.topic == reply_topic, f"reply topic {reply.topic!r}")
        check(
            getattr(reply.properties, "CorrelationData", None) == b"\x00\x01request-42",
            "the reply lost its correlation data",
        )
        summary["user_properties"] = user

    sub.close()
    pub.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
