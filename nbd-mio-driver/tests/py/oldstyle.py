"""Oldstyle negotiation (server started with -o): libnbd detects it from
the greeting and transmission works (nbd-protocol.md 3.1).
Usage: oldstyle.py URI SIZE FLUSH (FLUSH=1: also check FLUSH and FUA)"""

import sys

import nbd
from nbdtest import check, handle, ok

uri, size, flush = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
h = handle()
h.connect_uri(uri)
check(h.get_protocol() == "oldstyle", "protocol %r" % h.get_protocol())
check(not h.get_structured_replies_negotiated(), "oldstyle cannot negotiate structured replies")
check(h.get_size() == size, "size %d" % h.get_size())
h.pwrite(b"\x42" * 4096, 8192)
check(h.pread(4096, 8192) == b"\x42" * 4096, "read-back")
if flush:
    check(h.can_flush() and h.can_fua(), "memory export should advertise FLUSH and FUA")
    h.pwrite(b"\x43" * 4096, 12288, nbd.CMD_FLAG_FUA)
    h.flush()
    check(h.pread(4096, 12288) == b"\x43" * 4096, "FUA write read-back")
h.shutdown()
ok()
