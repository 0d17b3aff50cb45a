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

greeting = b"NBDMAGIC" + b"IHAVEOPT" + struct.pack(">H", 3)
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
}
for target, files in seeds.items():
    d = os.path.join("seeds", target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
