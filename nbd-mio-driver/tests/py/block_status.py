"""BLOCK_STATUS with base:allocation on a sparse memory export after a
partial write (checklist 105, 106, 109). Usage: block_status.py URI SIZE
The export must be fresh (never written) and at least 16 MiB."""

import sys

import nbd
from nbdtest import check, extents, handle, ok, status_at

uri, size = sys.argv[1], int(sys.argv[2])
h = handle()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation not negotiated")

# 64 KiB of non-zero data at 4 MiB, far from both ends so any sane page
# size leaves [0, 4M) and [8M, size) untouched.
start, length = 4 << 20, 64 << 10
h.pwrite(b"\xab" * length, start)

ext = extents(h, 0, size)
check(ext[0][0] == 0, "extents must start at the request offset: %r" % ext[:4])
for off, ln, flags in ext:
    check(ln > 0, "zero-length extent in %r" % ext)
    check(flags & ~3 == 0, "reserved status bits set: %r" % ext)
# The first n-1 extents stay inside the request (checklist 105).
check(sum(ln for _, ln, _ in ext[:-1]) < size, "extents overrun the request: %r" % ext)
covered = sum(ln for _, ln, _ in ext)
check(covered >= min(size, 1), "no extent returned")

# Written data must never be reported as zero (that would make clients
# skip it); fresh areas of a sparse memory disk are reported as zero.
for off in range(start, start + length, 4096):
    check(status_at(ext, off) & nbd.STATE_ZERO == 0, "written block at %d reported zero: %r" % (off, ext))
check(status_at(ext, 0) & nbd.STATE_ZERO, "unwritten start not reported zero: %r" % ext)
if covered > 8 << 20:
    check(status_at(ext, 8 << 20) & nbd.STATE_ZERO, "unwritten area after the data not zero: %r" % ext)

# A query starting inside the data (the reply starts at that offset).
ext = extents(h, start + 4096, 8192)
check(ext[0][0] == start + 4096 and ext[0][2] & nbd.STATE_ZERO == 0, "mid-data query: %r" % ext)

# REQ_ONE: exactly one extent, no longer than the request (checklist 106).
ext = extents(h, 0, 1 << 20, nbd.CMD_FLAG_REQ_ONE)
check(len(ext) == 1 and ext[0][1] <= 1 << 20, "REQ_ONE returned %r" % ext)
h.shutdown()
ok()
