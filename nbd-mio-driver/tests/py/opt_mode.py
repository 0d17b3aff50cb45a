"""Option haggling in libnbd's opt mode: LIST, INFO, LIST_META_CONTEXT,
SET_META_CONTEXT (via GO), GO. Usage: opt_mode.py URI EXPORT SIZE RO LISTNAME
where RO is 0/1 and LISTNAME is the name LIST must report."""

import sys

import nbd
from nbdtest import check, extents, handle, ok

uri, export, size, ro, list_name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]

h = handle(opt_mode=True)
h.connect_uri(uri)
check(h.aio_is_negotiating(), "opt mode must stop in negotiation")
check(h.get_protocol() == "newstyle-fixed", "protocol %r" % h.get_protocol())  # checklist 1
check(h.get_structured_replies_negotiated(), "structured replies not negotiated")  # checklist 34

# NBD_OPT_LIST (checklist 16): exactly the configured export.
names = []
n = h.opt_list(lambda name, desc: names.append(name))
check(n == len(names) == 1, "LIST returned %d exports: %r" % (n, names))
check(names[0] == list_name, "LIST names %r, expected %r" % (names, list_name))

# NBD_OPT_INFO (checklist 22), twice: the session stays in negotiation.
for _ in range(2):
    h.set_export_name(export)
    h.opt_info()
    check(h.get_size() == size, "INFO size %d != %d" % (h.get_size(), size))
    check(h.is_read_only() == ro, "INFO read-only %r != %r" % (h.is_read_only(), ro))
    check(h.aio_is_negotiating(), "INFO must leave the session negotiating")

# NBD_OPT_LIST_META_CONTEXT (checklist 40, 41, 42).
ctxs = []
h.opt_list_meta_context(lambda name: ctxs.append(name))
check(nbd.CONTEXT_BASE_ALLOCATION in ctxs, "LIST_META_CONTEXT (all): %r" % ctxs)
ctxs = []
h.add_meta_context("base:")
h.opt_list_meta_context(lambda name: ctxs.append(name))
check(ctxs == [nbd.CONTEXT_BASE_ALLOCATION], "LIST_META_CONTEXT base: -> %r" % ctxs)
h.clear_meta_contexts()
ctxs = []
h.add_meta_context("foo:bar")
n = h.opt_list_meta_context(lambda name: ctxs.append(name))
check(n == 0 and ctxs == [], "unknown namespace must list nothing: %r" % ctxs)
h.clear_meta_contexts()

# SET_META_CONTEXT: libnbd 1.14 has no opt_set_meta_context; opt_go sends
# SET_META_CONTEXT for the requested contexts before GO (checklist 43).
if hasattr(h, "opt_set_meta_context"):
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    n = h.opt_set_meta_context(lambda name: None)
    check(n == 1, "SET_META_CONTEXT base:allocation selected %d contexts" % n)
    h.clear_meta_contexts()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)

# NBD_OPT_GO (checklist 23, 26): same size as INFO, then transmission works.
h.opt_go()
check(h.aio_is_ready(), "GO must enter transmission")
check(h.get_size() == size, "GO size %d != %d" % (h.get_size(), size))
check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation not selected")
ext = extents(h, 0, min(size, 1 << 20))
check(len(ext) >= 1 and ext[0][0] == 0, "block status after GO: %r" % ext)
check(len(h.pread(4096, 0)) == 4096, "READ after GO")
h.shutdown()

# A GO for an export that does not exist: ERR_UNKNOWN, negotiation goes on
# (checklist 24). nbdkit serves any name, so the caller passes "-" to skip.
if len(sys.argv) > 6 and sys.argv[6] != "-":
    h = handle(opt_mode=True)
    h.connect_uri(uri)
    h.set_export_name(sys.argv[6])
    try:
        h.opt_go()
        raise AssertionError("GO for unknown export %r succeeded" % sys.argv[6])
    except nbd.Error:
        pass
    check(h.aio_is_negotiating(), "failed GO must leave the session negotiating")
    h.set_export_name(export)
    h.opt_go()
    check(h.get_size() == size, "GO after a failed GO")
    h.shutdown()

# ABORT (checklist 13).
h = handle(opt_mode=True)
h.connect_uri(uri)
h.opt_abort()
check(h.aio_is_closed(), "ABORT must close the session")
ok()
