"""A plaintext libnbd client against `--tls=require` (checklist 52):
structured replies are refused, LIST/INFO/LIST_META_CONTEXT/GO all fail
(libnbd reports NBD_REP_ERR_TLS_REQD as ENOTSUP), the session stays in
negotiation, and ABORT still works. Usage: tls_plaintext.py SOCKET"""

import errno
import sys

import nbd
from nbdtest import check, expect_errno, ok

sock = sys.argv[1]

h = nbd.NBD()
h.set_tls(nbd.TLS_DISABLE)
h.set_opt_mode(True)
h.connect_unix(sock)
check(h.aio_is_negotiating(), "opt mode must stop in negotiation")
check(not h.get_tls_negotiated(), "TLS must not be on")
check(not h.get_structured_replies_negotiated(), "STRUCTURED_REPLY must be refused before TLS")

expect_errno("LIST", errno.ENOTSUP, h.opt_list, lambda name, desc: 0)
expect_errno("INFO", errno.ENOTSUP, h.opt_info)
expect_errno("LIST_META_CONTEXT", errno.ENOTSUP, h.opt_list_meta_context, lambda name: 0)
expect_errno("GO", errno.ENOTSUP, h.opt_go)
check(h.aio_is_negotiating(), "refusals must leave the session negotiating")
# Nothing about the export leaked.
try:
    h.get_size()
    raise AssertionError("the export size leaked before TLS")
except nbd.Error:
    pass

h.opt_abort()
check(h.aio_is_closed(), "ABORT must end the session cleanly")
ok()
