"""Python grpcio as a foreign client of the gRPC resource server: Me.Get with a token,
without one and with a tampered one, and the health check without one. No generated
stubs: the messages are encoded by hand (GetRequest is empty; GetResponse is field 1, a
string; HealthCheckRequest's service is field 1). Prints one JSON object.
Usage: python3 grpcio_client.py HOST:PORT TOKEN"""
import json
import sys

import grpc


def varint(data, i):
    shift, value = 0, 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


def field(data, number):
    """The first occurrence of field `number`: bytes for length-delimited, int for varint."""
    i = 0
    while i < len(data):
        key, i = varint(data, i)
        wire = key & 7
        if wire == 0:
            value, i = varint(data, i)
        elif wire == 2:
            n, i = varint(data, i)
            value, i = data[i:i + n], i + n
        else:
            raise ValueError(f"wire type {wire}")
        if key >> 3 == number:
            return value
    return None


def call(channel, method, request, token):
    stub = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    try:
        return {"code": "OK", "response": stub(request, metadata=metadata, timeout=10)}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def main():
    addr, token = sys.argv[1], sys.argv[2]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    out = {}
    with grpc.insecure_channel(addr) as channel:
        for name, t in [("with_token", token), ("without_token", None), ("tampered", tampered)]:
            r = call(channel, "/keyrot.example.v1.Me/Get", b"", t)
            if "response" in r:
                r["sub"] = (field(r.pop("response"), 1) or b"").decode()
            out[name] = r
        r = call(channel, "/grpc.health.v1.Health/Check", b"", None)
        if "response" in r:
            r["status"] = field(r.pop("response"), 1) or 0
        out["health"] = r
    print(json.dumps(out))


main()
