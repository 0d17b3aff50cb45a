"""READ/WRITE with structured replies requested or not (checklist 34,
63, 96, 97). Usage: structured.py URI on|off"""

import sys

import nbd
from nbdtest import check, handle, ok

uri, mode = sys.argv[1], sys.argv[2]
sr = mode == "on"
h = handle(structured=sr)
if sr:
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
check(h.get_structured_replies_negotiated() == sr, "structured replies negotiated != %r" % sr)
check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION) == sr, "meta context only with structured replies")

data = bytes((i * 7 + 3) & 0xFF for i in range(128 * 1024))
h.pwrite(data, 65536)
check(h.pread(len(data), 65536) == data, "read-back mismatch")
check(h.pread(65536, 0) == bytes(65536), "unwritten area is not zero")
# A read straddling the hole and the data: both parts right.
check(h.pread(8192, 65536 - 4096) == bytes(4096) + data[:4096], "straddling read")

if sr:
    # pread_structured exposes the chunks: they must tile the request
    # exactly, without overlap (checklist 97, 98).
    seen = []

    def chunk(buf, offset, status, err):
        check(status in (nbd.READ_DATA, nbd.READ_HOLE), "chunk status %d" % status)
        if status == nbd.READ_HOLE:
            check(buf == bytes(len(buf)), "hole chunk not zero")
        seen.append((offset, len(buf)))
        return 0

    buf = h.pread_structured(256 * 1024, 0, chunk)
    check(buf == bytes(65536) + data + bytes(65536), "structured read content")
    seen.sort()
    pos = 0
    for off, length in seen:
        check(off == pos and length > 0, "chunks do not tile the request: %r" % seen)
        pos += length
    check(pos == 256 * 1024, "chunks cover %d of %d bytes" % (pos, 256 * 1024))
h.shutdown()
ok()
