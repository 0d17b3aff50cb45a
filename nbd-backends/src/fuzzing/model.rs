//! A filter stack over a memory base, built from fuzz input, and the model
//! of its top: the bytes it must read back, whether it may be written or
//! resized.
//!
//! The model needs no layer-by-layer simulation: nothing but the top of
//! the stack is used after it is built, so a window filter (offset,
//! partition) slices the model's bytes, cow makes the view writable again
//! (writes land in its overlay), readonly makes it read-only, and the rest
//! (delay 0, error rate 0, log, stats) pass everything through.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::input::Input;
use crate::filters::{Cow, Delay, ErrorInject, ErrorRule, Log, Offset, ReadOnly, Stats, partition};
use crate::{Backend, Caps, MemoryBackend};

/// Largest base: 6 pages, enough for partial pages and several cow
/// blocks, small enough that setting it up costs little per run.
const MAX_BASE: u64 = 24 * 1024;
const SECTOR: usize = 512;

/// What the top of the stack must look like.
pub struct Model {
    /// Its bytes; meaningful only where `known`.
    pub data: Vec<u8>,
    /// False where the content is unspecified (after a trim).
    pub known: Vec<bool>,
    pub writable: bool,
    pub resizable: bool,
    /// Layer names, innermost first, for failure messages.
    pub stack: Vec<&'static str>,
}

/// The stack and its model, or `None` when a partition layer was refused
/// (its own table checks; the refusal itself is checked for consistency).
pub fn build(input: &mut Input<'_>) -> Option<(Arc<dyn Backend>, Model)> {
    build_sized(input, 1)
}

/// [`build`] with a base of up to `unit` times [`MAX_BASE`] bytes, in
/// steps of `unit` (the driver's harness wants exports large enough for
/// its sparse-read path, which starts at 64 KiB).
pub fn build_sized(input: &mut Input<'_>, unit: u64) -> Option<(Arc<dyn Backend>, Model)> {
    let size = u64::from(input.u16()) % (MAX_BASE + 1) * unit;
    let bytes = initial_bytes(input, size as usize);
    let base = MemoryBackend::new(size).expect("memory base");
    base.write_at(0, &bytes, false).expect("fill the base");
    let mut b: Arc<dyn Backend> = Arc::new(base);
    let mut m = Model {
        known: vec![true; bytes.len()],
        data: bytes,
        writable: true,
        resizable: true,
        stack: vec!["memory"],
    };
    for _ in 0..input.u8() % 7 {
        b = m.wrap(b, input)?;
    }
    Some((b, m))
}

/// The base's first bytes: zeros, raw fuzz bytes (for the partition-table
/// parser), or a well-formed MBR with one entry taken from the input.
fn initial_bytes(input: &mut Input<'_>, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    match input.u8() % 3 {
        1 => {
            let raw = input.bytes(size.min(2 * SECTOR));
            v[..raw.len()].copy_from_slice(raw);
        }
        2 if size >= SECTOR => {
            let sectors = (size / SECTOR) as u32;
            let at = 446 + 16 * usize::from(input.u8() % 4);
            v[at + 4] = input.u8() | 1;
            let start = u32::from(input.u16()) % (sectors + 2);
            let len = u32::from(input.u16()) % (sectors + 2);
            v[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
            v[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
            v[510] = 0x55;
            v[511] = 0xaa;
        }
        _ => {}
    }
    v
}

impl Model {
    /// One more layer around `b`, chosen by the input.
    fn wrap(&mut self, b: Arc<dyn Backend>, input: &mut Input<'_>) -> Option<Arc<dyn Backend>> {
        let kind = input.u8() % 8;
        let new: Arc<dyn Backend> = match kind {
            0 => {
                self.writable = false;
                self.resizable = false;
                Arc::new(ReadOnly::new(b))
            }
            1 => return Some(self.offset(b, input)),
            2 => Arc::new(Delay::new(b, Duration::ZERO, Duration::ZERO)),
            3 => {
                let rule = || ErrorRule {
                    errno: libc::EIO,
                    rate: 0.0,
                    file: None,
                };
                Arc::new(ErrorInject::with_rules(b, std::array::from_fn(|_| rule())))
            }
            4 => {
                self.writable = true;
                self.resizable = false;
                Arc::new(Cow::new(b).expect("cow over a small export"))
            }
            5 => Arc::new(Stats::new(b, None)),
            6 => Arc::new(Log::new(b, Some(Path::new("/dev/null")), false).expect("/dev/null")),
            _ => return self.partition(b, input),
        };
        self.stack.push(
            [
                "readonly", "offset", "delay", "error", "cow", "stats", "log",
            ][usize::from(kind)],
        );
        Some(new)
    }

    /// `offset` with a window from the input; refused exactly when the
    /// window does not fit (then the layer is left out).
    fn offset(&mut self, b: Arc<dyn Backend>, input: &mut Input<'_>) -> Arc<dyn Backend> {
        let len = self.data.len() as u64;
        let off = u64::from(input.u16()) % (len + 2);
        let range = input.bool().then(|| u64::from(input.u16()) % (len + 2));
        let end = match range {
            Some(r) => off.checked_add(r),
            None => Some(len.max(off)),
        };
        let fits = off <= len && end.is_some_and(|e| e <= len);
        match Offset::new(b.clone(), off, range) {
            Ok(o) => {
                assert!(
                    fits,
                    "{:?}: offset {off} range {range:?} of {len} accepted",
                    self.stack
                );
                let end = end.expect("fits") as usize;
                self.window(off as usize, end);
                self.resizable = false;
                self.stack.push("offset");
                Arc::new(o)
            }
            Err(_) => {
                assert!(
                    !fits,
                    "{:?}: offset {off} range {range:?} of {len} refused",
                    self.stack
                );
                b
            }
        }
    }

    /// `partition=N`: the table parser's answer must lie inside the disk,
    /// and the export is then exactly that window.
    fn partition(
        &mut self,
        b: Arc<dyn Backend>,
        input: &mut Input<'_>,
    ) -> Option<Arc<dyn Backend>> {
        let n = u32::from(input.u8() % 6);
        let (start, len) = partition::locate(&*b, n).ok()?;
        let end = start.checked_add(len).expect("partition end overflows");
        assert!(
            len > 0 && end <= self.data.len() as u64,
            "{:?}: partition {n} at {start}+{len} outside {} bytes",
            self.stack,
            self.data.len()
        );
        let p = partition::open(b, n).expect("open after a successful locate");
        self.window(start as usize, end as usize);
        self.resizable = false;
        self.stack.push("partition");
        Some(Arc::new(p))
    }

    /// Only `[start, end)` stays visible.
    fn window(&mut self, start: usize, end: usize) {
        self.data = self.data[start..end].to_vec();
        self.known = self.known[start..end].to_vec();
    }

    /// Bytes `off..` become `bytes` (known) or unspecified (`None`).
    pub fn set(&mut self, off: u64, len: u64, bytes: Option<&[u8]>) {
        let r = off as usize..(off + len) as usize;
        match bytes {
            Some(b) => self.data[r.clone()].copy_from_slice(b),
            // What the memory backend reads after a trim, so reads take
            // the fast path of `compare`.
            None => self.data[r.clone()].fill(0),
        }
        self.known[r].fill(bytes.is_some());
    }

    /// Resize, new bytes reading as zeros.
    pub fn resize(&mut self, len: usize) {
        self.data.resize(len, 0);
        self.known.resize(len, true);
    }

    /// Size and capabilities agree with the model.
    pub fn check_caps(&self, b: &dyn Backend) {
        let caps = b.caps();
        assert_eq!(b.size(), self.data.len() as u64, "{:?}: size", self.stack);
        assert_eq!(
            caps.contains(Caps::READ_ONLY),
            !self.writable,
            "{:?}: READ_ONLY in {caps:?}",
            self.stack
        );
        assert_eq!(
            caps.contains(Caps::RESIZE),
            self.resizable,
            "{:?}: RESIZE in {caps:?}",
            self.stack
        );
    }

    /// `got`, read at `off`, matches every known byte.
    pub fn compare(&self, off: u64, got: &[u8]) {
        let r = off as usize..off as usize + got.len();
        let (want, known) = (&self.data[r.clone()], &self.known[r]);
        // One memcmp in the common case: a byte-by-byte loop here was
        // most of the fuzzer's time (each comparison is instrumented).
        if got == want {
            return;
        }
        // Where they differ (unspecified bytes after a trim), 64-byte
        // chunks that match are still one memcmp each; only the others
        // are looked at byte by byte (a third of the fuzzer's time before).
        let differs = |i: usize| known[i] && want[i] != got[i];
        let chunk = |c: usize| {
            let r = c * 64..(c * 64 + 64).min(got.len());
            if got[r.clone()] == want[r.clone()] {
                None
            } else {
                r.into_iter().find(|&i| differs(i))
            }
        };
        if let Some(i) = (0..got.len().div_ceil(64)).find_map(chunk) {
            panic!(
                "{:?}: byte {} reads {:#x}, model has {:#x}",
                self.stack,
                off + i as u64,
                got[i],
                want[i]
            );
        }
    }

    /// Every known byte of `r` is zero. Chunks of zeros are one memcmp
    /// each: a byte loop over whole ZERO extents was a third of the
    /// fuzzer's time (each comparison is instrumented).
    pub fn reads_zero(&self, r: std::ops::Range<usize>) -> bool {
        const ZEROS: [u8; 64] = [0; 64];
        let (data, known) = (&self.data[r.clone()], &self.known[r]);
        data.chunks(64)
            .zip(known.chunks(64))
            .all(|(d, k)| d == &ZEROS[..d.len()] || d.iter().zip(k).all(|(&b, &k)| b == 0 || !k))
    }

    /// The whole export reads as the model.
    pub fn check_all(&self, b: &dyn Backend) {
        let mut buf = vec![0u8; self.data.len()];
        b.read_at(0, &mut buf).expect("read the whole export");
        self.compare(0, &buf);
    }
}
