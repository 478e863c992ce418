"""A small HTTP/2 client on Python's `h2` (hyper-h2) for Ferry's interop tests.

`from h2_client import *` connects to argv[1]:argv[2] with prior knowledge (h2c) and gives
`start(method, path, body=None, trailer=None, headers=())` -> stream id, `run(ids)` (pump until
those streams end) and what came back per stream id: `status`, `heads`, `bodies`, `trailers`,
`ended`; then `finish()` closes the connection. Used by tests/serve_h2.rs and
proto/http2/tests/peers.rs (PYTHONPATH points here).
"""
import socket
import sys

import h2.config
import h2.connection
import h2.events

__all__ = ["c", "s", "host", "port", "start", "run", "finish",
           "bodies", "ended", "trailers", "status", "heads"]

host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port))
s.settimeout(60)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
c.initiate_connection()
c.increment_flow_control_window(1 << 24)
s.sendall(c.data_to_send())
bodies, ended, trailers, status, heads, pending = {}, set(), {}, {}, {}, {}


def start(method, path, body=None, trailer=None, headers=()):
    """Open a stream; a body (and trailers) go out as flow control allows, during `run`."""
    sid = c.get_next_available_stream_id()
    hdrs = [(':method', method), (':scheme', 'http'), (':authority', '%s:%d' % (host, port)),
            (':path', path)] + list(headers)
    c.send_headers(sid, hdrs, end_stream=body is None)
    if body is not None:
        pending[sid] = [memoryview(body), trailer]
    bodies[sid] = bytearray()
    return sid


def pump_send():
    for sid in list(pending):
        buf, tr = pending[sid]
        while len(buf):
            w = min(c.local_flow_control_window(sid), c.max_outbound_frame_size, len(buf))
            if w <= 0:
                break
            c.send_data(sid, bytes(buf[:w]))
            buf = buf[w:]
        pending[sid][0] = buf
        if not len(buf):
            if tr:
                c.send_headers(sid, tr, end_stream=True)
            else:
                c.end_stream(sid)
            del pending[sid]
    out = c.data_to_send()
    if out:
        s.sendall(out)


def run(ids):
    """Send and receive until every stream in `ids` has ended (bounded)."""
    for _ in range(1000000):
        if all(i in ended for i in ids):
            return
        pump_send()
        data = s.recv(1 << 16)
        if not data:
            raise SystemExit("server closed the connection")
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                heads[ev.stream_id] = dict(ev.headers)
                status[ev.stream_id] = heads[ev.stream_id][b':status']
            elif isinstance(ev, h2.events.DataReceived):
                bodies[ev.stream_id] += ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded):
                ended.add(ev.stream_id)
            elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                raise SystemExit("unexpected %r" % ev)
        out = c.data_to_send()
        if out:
            s.sendall(out)
    raise SystemExit("streams never ended")


def finish():
    """Close the connection with GOAWAY."""
    c.close_connection()
    s.sendall(c.data_to_send())
