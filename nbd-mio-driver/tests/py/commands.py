"""WRITE_ZEROES, TRIM, FLUSH, FUA and CACHE on a memory export
(checklist 78, 89, 90, 94). Usage: commands.py URI"""

import sys

import nbd
from nbdtest import check, handle, ok

uri = sys.argv[1]
h = handle()
h.connect_uri(uri)
for cap in ("can_flush", "can_fua", "can_trim", "can_zero", "can_cache"):
    check(getattr(h, cap)(), "memory export should advertise %s" % cap)

ones = b"\xff" * 65536
# WRITE_ZEROES, with and without NO_HOLE (checklist 90).
for flags in (0, nbd.CMD_FLAG_NO_HOLE):
    h.pwrite(ones, 0)
    h.zero(32768, 16384, flags)
    got = h.pread(65536, 0)
    check(got == ones[:16384] + bytes(32768) + ones[:16384], "WRITE_ZEROES flags=%d" % flags)
if h.can_fast_zero():
    # FAST_ZERO on a memory disk is fast: success or ENOTSUP, never damage.
    h.pwrite(ones, 0)
    try:
        h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO)
        check(h.pread(65536, 0) == bytes(65536), "fast zero")
    except nbd.Error as e:
        check(e.errnum == 95, "fast zero failed with %s" % e)
        check(h.pread(65536, 0) == ones, "failed fast zero changed data")

# TRIM: contents afterwards unspecified, a rewrite reads back (checklist 89).
h.pwrite(ones, 0)
h.trim(65536, 0)
h.pwrite(b"\x5a" * 4096, 4096)
check(h.pread(4096, 4096) == b"\x5a" * 4096, "write after trim")

# WRITE with FUA, then FLUSH (checklist 87, 88; durability is the backend's
# job, here we check the server accepts and answers them).
h.pwrite(b"\x11" * 8192, 131072, nbd.CMD_FLAG_FUA)
h.flush()
check(h.pread(8192, 131072) == b"\x11" * 8192, "FUA write")
h.zero(4096, 196608, nbd.CMD_FLAG_FUA)
h.trim(4096, 200704, nbd.CMD_FLAG_FUA)

# CACHE (checklist 94): succeeds, data unchanged.
h.cache(65536, 131072)
check(h.pread(8192, 131072) == b"\x11" * 8192, "data changed by CACHE")
h.flush()
h.shutdown()

# FUA on READ and FLUSH is accepted and ignored (checklist 78).
h = handle(strict=False)
h.connect_uri(uri)
check(h.pread(8192, 131072, nbd.CMD_FLAG_FUA) == b"\x11" * 8192, "READ with FUA")
h.flush(nbd.CMD_FLAG_FUA)
h.shutdown()
ok()
