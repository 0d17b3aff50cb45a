"""A TLS client that queues many 1 MiB READs and never reads a reply:
libnbd sends the requests, the script then sleeps without polling, so the
server's replies back up. The Rust test measures the server meanwhile.
Usage: tls_unread.py URI COUNT SECONDS"""

import sys
import time

import nbd

uri, count, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
h = nbd.NBD()
h.set_uri_allow_local_file(True)
h.connect_uri(uri)
check_tls = h.get_tls_negotiated()
assert check_tls, "TLS must be negotiated"
size = h.get_size()
buf = nbd.Buffer(1 << 20)
for i in range(count):
    h.aio_pread(buf, (i << 20) % size)
# Push out whatever libnbd still holds, without reading any reply.
while h.aio_get_direction() & nbd.AIO_DIRECTION_WRITE:
    h.aio_notify_write()
print("SENT", h.aio_in_flight(), flush=True)
time.sleep(secs)
print("DONE", flush=True)
