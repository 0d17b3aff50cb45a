//! One operation from the input against the stack, checked against the
//! model: in range it must succeed (or, for writes to a read-only stack,
//! fail), out of range it must fail, and reads must return the model's
//! bytes.

use std::io;

use super::input::Input;
use super::model::Model;
use crate::{Backend, Extent, ExtentFlags, ZeroFlags};

/// Longest request: three pages, so one request spans several cow blocks.
const MAX_LEN: u64 = 12 * 1024;

/// Run one operation and check it.
pub fn one(b: &dyn Backend, m: &mut Model, input: &mut Input<'_>) {
    let size = m.data.len() as u64;
    let op = input.u8();
    let (off, len) = range(input, size);
    let fits = off.checked_add(len).is_some_and(|e| e <= size);
    let ctx = |what: &str| format!("{:?}: {what} {off}+{len} of {size}", m.stack);
    match op % 9 {
        0 => {
            let mut buf = vec![0xa5; len as usize];
            let r = b.read_at(off, &mut buf);
            assert_eq!(r.is_ok(), fits, "{}: {r:?}", ctx("read"));
            if fits {
                m.compare(off, &buf);
            }
        }
        1 => {
            let data = pattern(len as usize, input.u8());
            let r = b.write_at(off, &data, input.bool());
            let ok = fits && m.writable;
            assert_eq!(r.is_ok(), ok, "{}: {r:?}", ctx("write"));
            if ok {
                m.set(off, len, Some(&data));
            }
        }
        2 => {
            let flags = ZeroFlags::from_bits_truncate(input.u8());
            let r = b.write_zeroes(off, len, flags);
            let ok = fits && m.writable;
            match r {
                Ok(()) => {
                    assert!(ok, "{}: {flags:?} succeeded", ctx("zero"));
                    m.set(off, len, Some(&vec![0; len as usize]));
                }
                // A fast zero may refuse instead (and must change nothing).
                Err(e) if ok && flags.contains(ZeroFlags::FAST) && unsupported(&e) => {}
                Err(e) => assert!(!ok, "{}: {flags:?}: {e}", ctx("zero")),
            }
        }
        3 => {
            let r = b.trim(off, len, input.bool());
            let ok = fits && m.writable;
            assert_eq!(r.is_ok(), ok, "{}: {r:?}", ctx("trim"));
            if ok {
                // Trimmed bytes are unspecified (Backend::trim).
                m.set(off, len, None);
            }
        }
        4 => assert!(b.flush().is_ok(), "{}", ctx("flush")),
        5 => {
            // A hint: out of range it may fail or be ignored.
            let r = b.cache(off, len);
            assert!(!fits || r.is_ok(), "{}: {r:?}", ctx("cache"));
        }
        6 => extents(b, m, off, len, usize::from(input.u8() % 9)),
        7 => {
            let new = u64::from(input.u16()) % (2 * MAX_LEN);
            let r = b.resize(new);
            assert_eq!(
                r.is_ok(),
                m.resizable,
                "{:?}: resize to {new}: {r:?}",
                m.stack
            );
            if r.is_ok() {
                m.resize(new as usize);
            }
        }
        _ => m.check_all(b),
    }
    m.check_caps(b);
}

/// An offset (sometimes near `u64::MAX`, for overflow checks) and a length.
fn range(input: &mut Input<'_>, size: u64) -> (u64, u64) {
    let off = if input.u8() & 0x80 != 0 {
        u64::MAX - u64::from(input.u8())
    } else {
        u64::from(input.u16()) % (size + 4097)
    };
    (off, u64::from(input.u16()) % (MAX_LEN + 1))
}

/// Data with runs of zeros (seed 0 mod 4), so zero-page elision is hit.
/// The pattern repeats every 256 bytes: one period is computed and
/// copied (a byte loop here was the fuzzer's hottest code).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    if seed.is_multiple_of(4) {
        return vec![0; len];
    }
    let period: Vec<u8> = (0..=255u8).map(|i| seed ^ i.wrapping_mul(31)).collect();
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = (len - v.len()).min(period.len());
        v.extend_from_slice(&period[..n]);
    }
    v
}

fn unsupported(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported || e.raw_os_error() == Some(libc::ENOTSUP)
}

/// Block status: at most `cap` extents, each non-empty, none past the end
/// of the export, and every ZERO extent really reads as zeros.
fn extents(b: &dyn Backend, m: &Model, off: u64, len: u64, cap: usize) {
    let size = m.data.len() as u64;
    let mut out = vec![
        Extent {
            len: 0,
            flags: ExtentFlags::empty()
        };
        cap
    ];
    let r = b.extents(off, len, &mut out);
    let n = match r {
        Ok(n) => n,
        Err(e) => {
            assert!(
                off > size,
                "{:?}: extents {off}+{len} of {size}: {e}",
                m.stack
            );
            return;
        }
    };
    assert!(
        off <= size,
        "{:?}: extents at {off} past {size} succeeded",
        m.stack
    );
    assert!(n <= cap, "{:?}: {n} extents in room for {cap}", m.stack);
    if cap > 0 && len > 0 && off < size {
        assert!(n > 0, "{:?}: no extent for {off}+{len}", m.stack);
    }
    let mut pos = off;
    for e in &out[..n] {
        assert!(e.len > 0, "{:?}: empty extent at {pos}", m.stack);
        let end = pos.checked_add(e.len).filter(|&end| end <= size);
        let end =
            end.unwrap_or_else(|| panic!("{:?}: extent {pos}+{} past {size}", m.stack, e.len));
        if e.flags.contains(ExtentFlags::ZERO) {
            assert!(
                m.reads_zero(pos as usize..end as usize),
                "{:?}: extent {pos}+{} says ZERO over data",
                m.stack,
                e.len
            );
        }
        pos = end;
    }
}
