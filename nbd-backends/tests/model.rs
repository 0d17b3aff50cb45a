//! Random operation sequences against the memory backend, compared with a
//! plain `Vec<u8>` model.

use nbd_backends::{Backend, Extent, ExtentFlags, MemoryBackend, ZeroFlags};
use proptest::prelude::*;

/// Small enough to check fully, with a partial last page.
const MAX: u64 = 5 * 4096 + 123;

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: u64, seed: u8 },
    Trim { off: u64, len: u64 },
    Zero { off: u64, len: u64, may_trim: bool },
    Resize { size: u64 },
    Read { off: u64, len: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..MAX, 0..3 * 4096u64);
    prop_oneof![
        4 => (range.clone(), any::<u8>()).prop_map(|((off, len), seed)| Op::Write { off, len, seed }),
        1 => range.clone().prop_map(|(off, len)| Op::Trim { off, len }),
        1 => (range.clone(), any::<bool>()).prop_map(|((off, len), may_trim)| Op::Zero { off, len, may_trim }),
        1 => (1..MAX).prop_map(|size| Op::Resize { size }),
        2 => range.prop_map(|(off, len)| Op::Read { off, len }),
    ]
}

fn fits(off: u64, len: u64, size: u64) -> bool {
    off.checked_add(len).is_some_and(|e| e <= size)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn memory_matches_vec_model(ops in proptest::collection::vec(op(), 1..40)) {
        let m = MemoryBackend::new(MAX).unwrap();
        let mut model = vec![0u8; MAX as usize];
        for op in ops {
            let size = model.len() as u64;
            match op {
                Op::Write { off, len, seed } => {
                    // Zero runs too, so zero-page elision is exercised.
                    let data: Vec<u8> = (0..len).map(|i| if seed % 3 == 0 { 0 } else { seed ^ (i as u8) }).collect();
                    let r = m.write_at(off, &data, false);
                    prop_assert_eq!(r.is_ok(), fits(off, len, size));
                    if r.is_ok() {
                        model[off as usize..(off + len) as usize].copy_from_slice(&data);
                    }
                }
                Op::Trim { off, len } | Op::Zero { off, len, .. } => {
                    let r = match op {
                        Op::Zero { may_trim, .. } => {
                            let f = if may_trim { ZeroFlags::MAY_TRIM } else { ZeroFlags::empty() };
                            m.write_zeroes(off, len, f)
                        }
                        _ => m.trim(off, len, false),
                    };
                    prop_assert_eq!(r.is_ok(), fits(off, len, size));
                    if r.is_ok() {
                        // The memory backend documents that trim zeroes.
                        model[off as usize..(off + len) as usize].fill(0);
                    }
                }
                Op::Resize { size } => {
                    m.resize(size).unwrap();
                    model.resize(size as usize, 0);
                }
                Op::Read { off, len } => {
                    let mut buf = vec![0xa5; len as usize];
                    let r = m.read_at(off, &mut buf);
                    prop_assert_eq!(r.is_ok(), fits(off, len, size));
                    if r.is_ok() {
                        prop_assert_eq!(&buf[..], &model[off as usize..(off + len) as usize]);
                    }
                }
            }
        }
        prop_assert_eq!(m.size(), model.len() as u64);
        let mut all = vec![0xa5; model.len()];
        m.read_at(0, &mut all).unwrap();
        prop_assert_eq!(&all, &model);
        // Extents agree with the model: holes read as zero, and a page
        // with any non-zero byte is never reported as a hole.
        let mut out = vec![Extent::default(); 64];
        let n = m.extents(0, model.len() as u64, &mut out).unwrap();
        let mut pos = 0usize;
        for e in &out[..n] {
            let slice = &model[pos..pos + e.len as usize];
            if e.flags.contains(ExtentFlags::ZERO) {
                prop_assert!(slice.iter().all(|&b| b == 0));
            }
            pos += e.len as usize;
        }
        prop_assert_eq!(pos, model.len());
        let pages_with_data = model.chunks(4096).filter(|p| p.iter().any(|&b| b != 0)).count() as u64;
        prop_assert_eq!(m.allocated_bytes(), pages_with_data * 4096, "every zero page freed");
    }
}
