"""16 pipelined asynchronous WRITEs then 16 READs in flight at once; every
request is answered exactly once with its own data (checklist 62, 65, 66).
Also NBD_CMD_DISC after pipelined writes (checklist 110).
Usage: aio.py URI"""

import sys

import nbd
from nbdtest import check, handle, ok

uri = sys.argv[1]
N, LEN = 16, 65536
h = handle()
h.connect_uri(uri)


def drain(cookies):
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        check(h.aio_command_completed(c), "command %d not completed" % c)


bufs = [nbd.Buffer.from_bytearray(bytearray([i + 1]) * LEN) for i in range(N)]
cookies = [h.aio_pwrite(bufs[i], i * LEN) for i in range(N)]
check(len(set(cookies)) == N, "cookies not unique")
check(h.aio_in_flight() > 1, "writes were not pipelined")
drain(cookies)

reads = [nbd.Buffer(LEN) for _ in range(N)]
# Issue in reverse order so replies can be matched only by cookie.
cookies = [h.aio_pread(reads[i], i * LEN) for i in reversed(range(N))]
check(h.aio_in_flight() > 1, "reads were not pipelined")
drain(cookies)
for i in range(N):
    check(reads[i].to_bytearray() == bytearray([i + 1]) * LEN, "read %d got the wrong data" % i)

# Mixed: writes and reads of disjoint areas interleaved.
cookies = []
for i in range(N):
    cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray([0xA0 + i]) * 4096), (N + i) * LEN))
    cookies.append(h.aio_pread(nbd.Buffer(4096), i * LEN))
drain(cookies)

# DISC after 3 pipelined writes: the writes are answered first (checklist 110).
cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"\x77") * 512), i * 512) for i in range(3)]
h.aio_disconnect(0)
while h.aio_in_flight() > 0 and not h.aio_is_closed():
    h.poll(-1)
for c in cookies:
    check(h.aio_command_completed(c), "write %d not answered before DISC" % c)

h = handle()
h.connect_uri(uri)
check(h.pread(1536, 0) == b"\x77" * 1536, "writes before DISC lost")
h.shutdown()
ok()
