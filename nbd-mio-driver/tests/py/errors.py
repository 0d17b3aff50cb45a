"""Range and permission errors with libnbd's strict checks off, so the
server (not libnbd) must reject them; the connection stays usable after
each (checklist 67-72). Usage: errors.py URI SIZE rw|ro"""

import errno
import sys

import nbd
from nbdtest import check, expect_errno, handle, ok

uri, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
h = handle(strict=False)
h.connect_uri(uri)
check(h.get_size() == size, "size %d" % h.get_size())


def still_usable():
    check(len(h.pread(512, 0)) == 512, "connection unusable after an error")


if mode == "rw":
    expect_errno("READ past end (67)", errno.EINVAL, h.pread, 4096, size - 512)
    still_usable()
    expect_errno("READ beyond end (68)", errno.EINVAL, h.pread, 512, size + 4096)
    still_usable()
    expect_errno("READ offset+len overflows u64 (68)", errno.EINVAL, h.pread, 4096, (1 << 64) - 512)
    still_usable()
    expect_errno("WRITE past end (69)", errno.ENOSPC, h.pwrite, b"x" * 4096, size - 512)
    still_usable()
    if h.can_trim():
        expect_errno("TRIM past end (72)", errno.EINVAL, h.trim, 4096, size - 512)
        still_usable()
    if h.can_zero():
        expect_errno("WRITE_ZEROES past end (72)", errno.ENOSPC, h.zero, 4096, size - 512)
        still_usable()
    # The tail inside the export is untouched by the rejected requests.
    check(h.pread(512, size - 512) == bytes(512), "rejected WRITE changed data")
else:
    check(h.is_read_only(), "export should be read-only")
    before = h.pread(4096, 0)
    # The payload is drained and nothing is written (checklist 70, 80).
    expect_errno("WRITE to read-only (70)", errno.EPERM, h.pwrite, b"\xee" * 65536, 0)
    still_usable()
    expect_errno("TRIM on read-only (71)", errno.EPERM, h.trim, 4096, 0)
    still_usable()
    expect_errno("WRITE_ZEROES on read-only (71)", errno.EPERM, h.zero, 4096, 0)
    still_usable()
    check(h.pread(4096, 0) == before, "read-only data changed")
h.shutdown()
ok()
