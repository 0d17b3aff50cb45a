#!/usr/bin/env python3
"""Writes the spec-vector seeds under fuzz/seeds/<target>/ (committed).
Byte layouts follow ../shared/reference/nbd-protocol.md; run from fuzz/."""
import os, struct

def opt(code, data=b""):
    return b"IHAVEOPT" + struct.pack(">II", code, len(data)) + data

def rep(option, ty, data=b""):
    return bytes.fromhex("0003e889045565a9") + struct.pack(">III", option, ty, len(data)) + data

def info(name, reqs=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(reqs)) + b"".join(struct.pack(">H", r) for r in reqs)

def meta(name, qs):
    return struct.pack(">I", len(name)) + name + struct.pack(">I", len(qs)) + b"".join(struct.pack(">I", len(q)) + q for q in qs)

def req(cmd, cookie, off, ln, flags=0, ext=False):
    if ext:
        return struct.pack(">IHHQQQ", 0x21e41c71, flags, cmd, cookie, off, ln)
    return struct.pack(">IHHQQI", 0x25609513, flags, cmd, cookie, off, ln)

def simple(cookie, err=0):
    return struct.pack(">IIQ", 0x67446698, err, cookie)

def chunk(ty, cookie, payload, done=True, ext=False, off=0):
    fl = 1 if done else 0
    if ext:
        return struct.pack(">IHHQQQ", 0x6e8a278c, fl, ty, cookie, off, len(payload)) + payload
    return struct.pack(">IHHQI", 0x668e33ef, fl, ty, cookie, len(payload)) + payload

# backend_stacks (nbd_backends::fuzzing): base size, base bytes, layers
# (innermost first), then operations; integers little-endian.
def stack(size, layers=(), init=b"\0"):
    return struct.pack("<H", size) + init + bytes([len(layers)]) + b"".join(layers)

def mbr(entry, ty, start, sectors):
    return bytes([2, entry, ty]) + struct.pack("<HH", start, sectors)

L_RO, L_DELAY, L_ERROR, L_COW, L_STATS, L_LOG = b"\0", b"\2", b"\3", b"\4", b"\5", b"\6"

def l_offset(off, rng=None):
    return b"\1" + struct.pack("<H", off) + (b"\0" if rng is None else b"\1" + struct.pack("<H", rng))

def l_partition(n):
    return b"\7" + bytes([n])

def op(code, off, ln, extra=b""):
    return bytes([code, 0]) + struct.pack("<HH", off, ln) + extra

READ, CHECK = 0, 8
def write(off, ln, seed=7, fua=0): return op(1, off, ln, bytes([seed, fua]))
def zero(off, ln, flags=0): return op(2, off, ln, bytes([flags]))
def trim(off, ln): return op(3, off, ln, b"\0")
def extents(off, ln, cap=4): return op(6, off, ln, bytes([cap]))
def resize(size): return op(7, 0, 0, struct.pack("<H", size))
def overflow(code, ln): return bytes([code, 0x80, 3]) + struct.pack("<H", ln) + b"\0" * {1: 2, 2: 1, 3: 1, 6: 1}.get(code, 0)

backend_ops = (write(100, 5000) + op(READ, 0, 8192) + zero(4096, 4096, 1) + zero(0, 512, 2) + trim(8192, 4096)
               + extents(0, 16384) + op(4, 0, 0) + op(5, 0, 4096) + write(12000, 3000, 4) + op(CHECK, 0, 0))

# tls_records (nbd_mio_driver::tls::fuzzing): mode byte (0 X.509, 1 X.509
# requiring client certificates, 2 PSK: raw ciphertext; 3/4 a rustls client
# over TLS 1.3/1.2), then operations; integers little-endian.
def ext(ty, data):
    return struct.pack(">HH", ty, len(data)) + data

def vec8(b): return bytes([len(b)]) + b
def vec16(b): return struct.pack(">H", len(b)) + b

def client_hello(tls13=True):
    # TLS 1.2 only: the ECDHE-PSK suites nbdd's OpenSSL PSK server offers.
    suites = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02C, 0xC02F, 0xCCA9, 0xC038, 0xC037] if tls13 else [0xCCAC, 0xC038, 0xC037]
    exts = (ext(0, vec16(b"\0" + vec16(b"localhost")))             # server_name
            + ext(10, vec16(struct.pack(">HHH", 29, 23, 24)))       # supported_groups
            + ext(11, vec8(b"\0"))                                  # ec_point_formats
            + ext(13, vec16(struct.pack(">HHHH", 0x0403, 0x0804, 0x0401, 0x0807))))
    if tls13:
        exts += (ext(43, vec8(struct.pack(">HH", 0x0304, 0x0303)))  # supported_versions
                 + ext(45, vec8(b"\1"))                             # psk_key_exchange_modes
                 + ext(51, vec16(struct.pack(">HH", 29, 32) + bytes(range(1, 33)))))  # key_share x25519
    body = (b"\3\3" + bytes(range(32)) + vec8(bytes(range(32))) + vec16(b"".join(struct.pack(">H", c) for c in suites))
            + vec8(b"\0") + vec16(exts))
    hs = b"\1" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\3\1" + vec16(hs)

def r_feed(data): return b"\0" + struct.pack("<H", len(data)) + data
def r_repeat(chunk, times): return b"\1" + vec8(chunk)[:1] + chunk + struct.pack("<H", times)
R_READ, R_CLOSE = b"\2", b"\5"
def r_write(n): return b"\3" + struct.pack("<H", n)
def r_take(room): return b"\4" + struct.pack("<H", room)

def c_write(n, seed=1): return b"\0" + struct.pack("<H", n) + bytes((seed + i) % 256 for i in range(n))
def c_deliver(limit, read=True): return (b"\1" if read else b"\2") + struct.pack("<H", limit)
def c_corrupt(at, xor=0x40): return b"\3" + struct.pack("<H", at) + bytes([xor])
def c_server_write(n, byte=0x33): return b"\4" + bytes([byte]) + struct.pack("<H", n)
def c_to_client(room): return b"\5" + struct.pack("<H", room)
C_CLIENT_CLOSE, C_SERVER_CLOSE = b"\6", b"\7"
def c_bulk(n, byte=0x44): return b"\x08" + bytes([byte]) + struct.pack("<H", n)

greeting = b"NBDMAGIC" + b"IHAVEOPT" + struct.pack(">H", 3)
# server (nbd_mio_driver::fuzzing): features byte (a set bit turns off, in
# order: fixed newstyle, NO_ZEROES, structured replies, extended headers,
# meta contexts; 32: only 8 options; 0xc0: oldstyle), a byte for TLS policy
# (value % 3: off, on, require), pool (4), export count ((v >> 3) % 3 + 1),
# any name (0x20) and a 1 MiB budget (0x40); per export a policy byte
# (1 allow resize, 2 TLS only, (p >> 3) % 4: no/short/over-long/empty
# description) and a backend_stacks stack whose size unit is 8 bytes; then
# a schedule (length byte, events) and the raw client bytes.
def other(tls=0, pool=False, count=1, any_name=False, small=False):
    for v in range(256):
        if (v % 3 == tls and bool(v & 4) == pool and (v >> 3) % 3 + 1 == count
                and bool(v & 0x20) == any_name and bool(v & 0x40) == small):
            return v
    raise ValueError("no byte for that configuration")

def srv(features, oth, exports, schedule, client):
    return bytes([features, oth]) + b"".join(exports) + bytes([len(schedule)]) + bytes(schedule) + client

def export(size, layers=(), policy=0):
    return bytes([policy]) + stack(size // 8, layers)

def deliver(k): return 4 * k          # 2^k client bytes
def run_jobs(n): return 1 + 4 * (n - 1)  # n = 1..4
def complete(i): return 2 + 4 * i     # finished job i (modulo)
READ_ALL, SHUTDOWN, CLIENT_EOF = 3, 3 + 4 * 2, 3 + 4 * 3
HOUSEKEEP = 3 + 4 * 32
def read_some(k): return 3 + 4 * (1 + 4 * k)  # 2^(arg % 16) bytes

def hello(flags=3): return struct.pack(">I", flags)
def go(name=b"", reqs=(), code=7): return opt(code, info(name, reqs))
SR, EH = opt(8), opt(11)
def set_meta(name=b""): return opt(10, meta(name, [b"base:allocation"]))
def wr(cookie, off, data, flags=0, ext=False):
    if ext:
        return req(1, cookie, off, len(data), flags, True) + data
    return req(1, cookie, off, len(data), flags) + data

def session(ext=False):
    """A little of everything after GO, ending with DISC."""
    e = ext
    return (wr(1, 0, bytes(range(256)) * 16, ext=e) + req(0, 2, 0, 8192, ext=e) + req(0, 3, 4096, 4096, 4, ext=e)
            + req(7, 4, 0, 65536, ext=e) + req(7, 5, 0, 65536, 8, ext=e) + req(4, 6, 8192, 4096, ext=e)
            + req(6, 7, 12288, 4096, 2, ext=e) + req(6, 8, 16384, 4096, 16, ext=e) + req(3, 9, 0, 0, ext=e)
            + req(5, 10, 0, 4096, ext=e) + req(0, 11, 60000, 8192, ext=e) + req(1, 12, 0, 0, ext=e)
            + wr(13, 100, b"x" * 100, 1, ext=e) + req(0, 14, 100, 100, ext=e) + req(2, 15, 0, 0, ext=e))

def exactly(n):
    """Deliver events for exactly n client bytes (powers of two)."""
    return [deliver(k) for k in range(16, -1, -1) if n & (1 << k)]

before_tls = hello() + opt(3) + go(b"a", [], 6) + opt(5)
negotiate_sr = hello() + SR + set_meta() + go(b"", [3])
negotiate_ext = hello() + EH + set_meta() + go(b"", [3])

seeds = {
    "request_stream": {
        "simple_mixed": bytes([0, 0xff]) + req(0, 1, 0, 512) + req(1, 2, 0, 4) + b"abcd" + req(3, 3, 0, 0) + req(4, 4, 0, 4096) + req(2, 5, 0, 0),
        "simple_errors": bytes([0, 0x00]) + req(0, 1, 1 << 21, 512) + req(1, 2, 0, 8) + b"\x25\x60\x95\x13xxxx" + req(42, 3, 0, 0) + req(0, 4, 0, 512, 0x80),
        "structured_df": bytes([1, 0x3f]) + req(0, 1, 0, 512, 0x04) + req(7, 2, 0, 4096) + req(0, 3, 1 << 20, 1),
        "extended_payload": bytes([0x42, 0xff]) + req(1, 1, 0, 4, 0x20, True) + b"wxyz" + req(7, 2, 0, 12, 0x20, True) + struct.pack(">QI", 4096, 1) + req(0, 3, 8, 16, 0, True),
        "aligned_bs": bytes([0x08, 0xff]) + req(0, 1, 1, 512) + req(1, 2, 0, 100) + b"\0" * 100,
        "huge_write": bytes([0, 0]) + req(1, 1, 0, 0xffffffff),
    },
    "option_payload": {
        "info_req": info(b"disk", (0, 1, 2, 3)),
        "meta_req": meta(b"disk", [b"base:allocation", b"qemu:dirty-bitmap:a"]),
        "info_export": struct.pack(">HQH", 0, 1 << 20, 0x4d),
        "info_block_size": struct.pack(">HIII", 3, 512, 4096, 65536),
        "rep_server": bytes([2]) + struct.pack(">I", 4) + b"diskdesc",
        "rep_meta": bytes([4]) + struct.pack(">I", 1) + b"base:allocation",
        "chunk_offset_data": bytes([1]) + struct.pack(">Q", 4096) + b"data",
        "chunk_hole": bytes([2]) + struct.pack(">QI", 0, 512),
        "chunk_bs": bytes([5]) + struct.pack(">IIIII", 1, 512, 3, 1024, 0),
        "chunk_bs_ext": bytes([6]) + struct.pack(">IIQQ", 1, 1, 512, 3),
        "chunk_error": bytes([0x81]) + struct.pack(">IH", 22, 3) + b"bad",
        "greeting": greeting,
        "request": req(1, 7, 0, 4) + b"abcd",
        "ext_request": req(1, 7, 0, 4, 0x20, True) + b"abcd",
        "chunk_header": chunk(0, 9, b""),
    },
    "server_handshake": {
        "go": bytes([0x1c]) + struct.pack(">I", 3) + opt(7, info(b"", (3,))) + req(0, 1, 0, 512),
        "structured_meta_go": bytes([0x1c]) + struct.pack(">I", 3) + opt(8) + opt(10, meta(b"", [b"base:allocation"])) + opt(9, meta(b"", [])) + opt(7, info(b"")) + req(7, 1, 0, 4096) + req(0, 2, 0, 16, 0x04),
        "extended": bytes([0x1c]) + struct.pack(">I", 3) + opt(11) + opt(10, meta(b"", [b"base:allocation"])) + opt(7, info(b"")) + req(7, 1, 0, 12, 0x20, True) + struct.pack(">QI", 64, 1),
        "export_name_zeroes": bytes([0]) + struct.pack(">I", 1) + opt(1, b""),
        "list_unknown_abort": bytes([0x0c]) + struct.pack(">I", 3) + opt(3) + opt(0x1234, b"x" * 9) + opt(4, b"disk") + opt(2, b"12345"),
        "tls_require": bytes([0x1e]) + struct.pack(">I", 3) + opt(3) + opt(5) + opt(8) + opt(7, info(b"x")) + opt(7, info(b"")),
        "bad_info": bytes([0x1c]) + struct.pack(">I", 3) + opt(6, b"\0\0\0\x50ab") + opt(10, b"\0\0\0\0\0\0\0\x01\0\0\0\xff"),
    },
    "client_replies": {
        "go_structured": bytes([0x50]) + greeting + rep(8, 1) + rep(10, 4, struct.pack(">I", 1) + b"base:allocation") + rep(10, 1) + rep(7, 3, struct.pack(">HQH", 0, 4096, 1)) + rep(7, 1),
        "list_then_go": bytes([0x88]) + greeting + rep(3, 2, struct.pack(">I", 1) + b"e") + rep(3, 1) + rep(7, 3, struct.pack(">HQH", 0, 4096, 1)) + rep(7, 1),
        "fallback": bytes([0x80]) + greeting + rep(8, 0x80000001) + rep(7, 0x80000001, b"old") + struct.pack(">QH", 4096, 1),
        "oldstyle": bytes([0]) + b"NBDMAGIC" + bytes.fromhex("0000420281861253") + struct.pack(">QI", 4096, 1) + b"\0" * 124,
        "simple_stream": bytes([0]) + simple(3, 0) + b"\0" * 0 + simple(1) + simple(2, 22),
        "structured_stream": bytes([1]) + chunk(1, 7, struct.pack(">Q", 0) + b"data", False) + chunk(2, 7, struct.pack(">QI", 4, 8), False) + chunk(0, 7, b"") + chunk(5, 8, struct.pack(">III", 1, 512, 0)) + chunk(0x8001, 9, struct.pack(">IH", 22, 2) + b"no") + simple(10),
        "extended_stream": bytes([2]) + chunk(6, 1, struct.pack(">IIQQ", 1, 1, 512, 2), True, True, 4096) + chunk(0x8002, 2, struct.pack(">IH", 5, 0) + struct.pack(">Q", 8), True, True),
    },
    "server": {
        "structured_inline": srv(0, other(), [export(65536)], [], negotiate_sr + session()),
        "extended_pool_out_of_order": srv(0, other(pool=True), [export(65536, [L_COW])],
                                          [deliver(9), run_jobs(2), deliver(12), run_jobs(4), complete(3), read_some(5),
                                           complete(0), run_jobs(4), run_jobs(4), complete(2), READ_ALL, complete(1)],
                                          negotiate_ext + session(ext=True)),
        "simple_export_name": srv(0, other(), [export(32768, [L_STATS])], [],
                                  hello(1) + opt(1, b"") + session()),
        "oldstyle": srv(0xc0, other(), [export(16384)], [], session()),
        "list_info_three_exports": srv(0, other(count=3), [export(4096, policy=8), export(65536, [L_RO], policy=16),
                                                           export(8192, [l_offset(512)], policy=2)], [],
                                       hello() + opt(3) + go(b"a", [0, 1, 2, 3], 6) + go(b"b", [], 6) + go(b"zz", [], 6)
                                       + opt(9, meta(b"a", [b"base:"])) + SR + set_meta(b"a") + go(b"a", [1, 2, 3])
                                       + session()),
        "sparse_read": srv(0, other(), [export(196608, [L_STATS, l_offset(4096)])], [],
                           negotiate_sr + wr(1, 70000, b"y" * 5000) + req(0, 2, 0, 131072) + req(7, 3, 0, 131072)
                           + req(0, 4, 65536, 65536, 4) + req(2, 5, 0, 0)),
        # Up to STARTTLS in the clear, delivered exactly (then the client
        # reads the ACK and starts TLS); the rest goes through TLS.
        "starttls_tls_only": srv(0, other(tls=1, count=2), [export(4096), export(8192, policy=2)],
                                 exactly(len(before_tls)) + [READ_ALL],
                                 before_tls + opt(3) + SR + set_meta(b"a") + go(b"a", [3]) + session()),
        "shutdown_midway": srv(0, other(pool=True), [export(65536)],
                               [deliver(10), run_jobs(1), SHUTDOWN, deliver(16), run_jobs(4), complete(0)],
                               negotiate_sr + session()),
        "write_disc_junk": srv(0, other(), [export(8192)], [deliver(16)],
                               negotiate_sr + wr(1, 0, b"z" * 512) + req(2, 2, 0, 0) + b"junk" * 8),
        # The client closes its side in the middle of a request header.
        "eof_mid_request": srv(0, other(), [export(8192)], [],
                               negotiate_sr + req(0, 1, 0, 512) + req(0, 2, 0, 512)[:10]),
        # Idle between bursts: housekeeping gives the buffers back.
        "housekeeping_between_bursts": srv(0, other(), [export(65536)],
                                           [deliver(12), READ_ALL, HOUSEKEEP, HOUSEKEEP, deliver(16), HOUSEKEEP, READ_ALL, HOUSEKEEP],
                                           negotiate_sr + session()),
        "resize_allowed": srv(0, other(), [export(65536, policy=1)], [],
                              negotiate_sr + req(8, 1, 32768, 0) + req(0, 2, 0, 32768) + req(0, 3, 32768, 512)
                              + req(8, 4, 0, 0) + req(2, 5, 0, 0)),
        "budget_backpressure": srv(0, other(pool=True, small=True), [export(196608)],
                                   [deliver(16), run_jobs(4), complete(5), deliver(16), READ_ALL, run_jobs(4), complete(1),
                                    READ_ALL, deliver(16), CLIENT_EOF],
                                   negotiate_sr + b"".join(req(0, i, (i % 3) * 65536, 65536) for i in range(40))
                                   + req(2, 99, 0, 0)),
    },
    "backend_stacks": {
        "memory_resize": stack(20000) + backend_ops + resize(24000) + op(READ, 19000, 5000) + resize(100) + op(CHECK, 0, 0),
        "cow_over_readonly": stack(16384, [L_RO, L_COW]) + backend_ops,
        "readonly_over_cow": stack(16384, [L_COW, L_RO]) + backend_ops,
        "offset_passthrough": stack(20000, [l_offset(1000, 15000), L_LOG, L_STATS, L_ERROR, L_DELAY]) + backend_ops + resize(5),
        "offset_to_end": stack(12345, [l_offset(345)]) + backend_ops,
        "mbr_partition_cow": stack(24576, [l_partition(1), L_COW], mbr(0, 0x83, 2, 40)) + backend_ops,
        "mbr_unused_entry": stack(4096, [l_partition(2)], mbr(0, 0x83, 1, 4)),
        "overflow": stack(8192, [L_COW]) + overflow(0, 10) + overflow(1, 10) + overflow(2, 10) + overflow(3, 10) + overflow(6, 10),
    },
    "tls_records": {
        "x509_client_hello": b"\0" + r_feed(client_hello()) + R_READ + r_take(1000) + r_write(100) + r_take(16384) + R_CLOSE,
        "verify_client_hello": b"\1" + r_feed(client_hello()) + r_take(16384) + r_feed(b"\x15\3\3\0\2\2\x28"),
        "psk_client_hello": b"\2" + r_feed(client_hello(False)) + R_READ + r_take(16384) + r_write(10) + R_CLOSE,
        "huge_record_headers": b"\0" + r_repeat(b"\x16\3\1\x40\0", 60000) + r_take(100),
        "early_app_data": b"\0" + r_repeat(b"\x17\3\3\0\x10" + b"\0" * 16, 9000) + R_READ,
        "tls13_both_ways": b"\3" + c_write(4000) + c_deliver(65535) + c_server_write(5000) + c_to_client(16384)
                           + c_write(100, 7) + c_deliver(10) + c_deliver(65535) + c_server_write(300) + c_to_client(7),
        "tls12_unread_bulk": b"\4" + c_bulk(65535) * 3 + c_write(100) + c_deliver(65535, False) + c_deliver(65535) + c_server_write(60000)
                             + c_server_write(60000) + c_to_client(1000) + c_deliver(65535),
        "tls13_closes": b"\3" + c_write(1000) + c_deliver(65535) + C_CLIENT_CLOSE + c_deliver(65535) + c_server_write(10)
                        + C_SERVER_CLOSE + c_to_client(16384),
        "tls12_corrupt": b"\4" + c_write(1000) + c_corrupt(10) + c_deliver(65535),
    },
}
for target, files in seeds.items():
    d = os.path.join("seeds", target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
