"""A gRPC server on Python's `grpcio` for Ferry's proxy tests (tests/proxy_grpc.rs).

Raw-bytes methods (no protobuf: the generic handlers pass bytes through) of service
`ferry.Echo` on 127.0.0.1 (port 0: any free one), printing its port once serving:

- `Unary`: the request back, with trailing metadata `x-served-by: NAME`; a request
  `fail:TEXT` ends with INVALID_ARGUMENT and message TEXT; `sleep:SECONDS` answers after
  that long (deadline tests).
- `ServerStream`: the request is `N:SIZE`: N messages of SIZE bytes each (message i all
  bytes `i % 251`).
- `ClientStream`: `COUNT:TOTAL_BYTES` of what the client sent.
- `Bidi`: each message back as it comes.

argv: [name]. Runs until killed.
"""
import sys
import time
from concurrent import futures

import grpc

NAME = sys.argv[1] if len(sys.argv) > 1 else "echo"
MAX = 16 * 1024 * 1024


def unary(req, ctx):
    if req.startswith(b"fail:"):
        ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, req[5:].decode())
    if req.startswith(b"sleep:"):
        time.sleep(float(req[6:]))
    ctx.set_trailing_metadata((("x-served-by", NAME),))
    return req


def server_stream(req, ctx):
    n, size = (int(x) for x in req.split(b":"))
    for i in range(n):
        yield bytes([i % 251]) * size


def client_stream(it, ctx):
    count = total = 0
    for m in it:
        count += 1
        total += len(m)
    return b"%d:%d" % (count, total)


def bidi(it, ctx):
    for m in it:
        yield m


handler = grpc.method_handlers_generic_handler(
    "ferry.Echo",
    {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    },
)
server = grpc.server(
    futures.ThreadPoolExecutor(max_workers=16),
    options=[
        ("grpc.max_receive_message_length", MAX),
        ("grpc.max_send_message_length", MAX),
    ],
)
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
