"""Shared helpers for the libnbd-driven interop scripts.

Each script is run by a Rust test (tests/e2e_libnbd.rs) with
/usr/bin/python3 (Debian's python3-libnbd). A script exits 0 only if every
check passed; any failed check raises and prints a traceback. Checklist
numbers refer to nbd-protocol.md section 9.
"""

import errno
import sys

import nbd


def handle(structured=True, opt_mode=False, strict=True):
    """A fresh libnbd handle with the given negotiation knobs."""
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    if opt_mode:
        h.set_opt_mode(True)
    if not strict:
        # Let libnbd send requests it knows to be invalid, so that the
        # server's own checks (not the client's) are what the test sees.
        h.set_strict_mode(0)
    return h


def expect_errno(what, want, fn, *args, **kw):
    """Call fn and require it to fail with the NBD error `want` (an errno)."""
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        if e.errnum != want:
            raise AssertionError(
                "%s: expected %s, got errno %s (%s)"
                % (what, errno.errorcode[want], e.errnum, e.string)
            )
        return
    raise AssertionError("%s: expected %s, but it succeeded" % (what, errno.errorcode[want]))


def check(cond, msg):
    """Assert with a message that survives `python3 -O`."""
    if not cond:
        raise AssertionError(msg)


def extents(h, offset, count, flags=0):
    """base:allocation extents as a list of (offset, length, flags)."""
    got = []

    def cb(metacontext, off, entries, err):
        check(metacontext == nbd.CONTEXT_BASE_ALLOCATION, "unexpected context %r" % metacontext)
        pos = off
        for i in range(0, len(entries), 2):
            got.append((pos, entries[i], entries[i + 1]))
            pos += entries[i]
        return 0

    h.block_status(count, offset, cb, flags)
    return got


def status_at(exts, offset):
    """The base:allocation flags of the extent containing `offset`."""
    for off, length, flags in exts:
        if off <= offset < off + length:
            return flags
    raise AssertionError("offset %d not covered by extents %r" % (offset, exts))


def ok():
    """The marker the Rust side looks for: the script ran to its end."""
    print("ALL CHECKS PASSED: " + sys.argv[0])
