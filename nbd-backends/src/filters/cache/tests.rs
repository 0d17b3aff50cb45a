use super::*;
use crate::MemoryBackend;
use crate::filters::Stats;

const BS: u64 = 4096;

fn setup(opts: CacheOptions) -> (Arc<MemoryBackend>, Cache) {
    let mem = Arc::new(MemoryBackend::new(64 * BS + 100).unwrap());
    let c = Cache::new(mem.clone(), Arc::new(opts)).unwrap();
    (mem, c)
}

fn opts(mode: CacheMode) -> CacheOptions {
    CacheOptions {
        mode,
        block_size: BS,
        ..CacheOptions::default()
    }
}

fn byte(b: &dyn Backend, at: u64) -> u8 {
    let mut x = [0];
    b.read_at(at, &mut x).unwrap();
    x[0]
}

#[test]
fn writeback_keeps_writes_until_flush() {
    let (mem, c) = setup(opts(CacheMode::Writeback));
    c.write_at(10, &[7; 5000], false).unwrap();
    assert_eq!(byte(&*mem, 10), 0, "not written below yet");
    assert_eq!(byte(&c, 10), 7);
    assert_eq!(byte(&c, 9), 0, "read-modify-write kept the rest");
    c.flush().unwrap();
    assert_eq!(byte(&*mem, 5009), 7);
    c.write_at(100, &[8], true).unwrap();
    assert_eq!(byte(&*mem, 100), 8, "FUA goes below at once");
}

#[test]
fn writethrough_and_unsafe() {
    let (mem, c) = setup(opts(CacheMode::Writethrough));
    c.write_at(0, &[3; 10], false).unwrap();
    assert_eq!(byte(&*mem, 0), 3);
    let (mem, c) = setup(opts(CacheMode::Unsafe));
    c.write_at(0, &[3; 10], true).unwrap();
    c.flush().unwrap();
    assert_eq!(byte(&*mem, 0), 0, "unsafe ignores FUA and flush");
    assert_eq!(byte(&c, 0), 3);
}

#[test]
fn bounded_cache_evicts_least_recently_used_writing_back_dirty() {
    let o = CacheOptions {
        max_size: Some(4 * BS),
        ..opts(CacheMode::Writeback)
    };
    let (mem, c) = setup(o);
    for b in 0..20u64 {
        c.write_at(b * BS, &[b as u8 + 1; BS as usize], false)
            .unwrap();
        assert!(c.lock().len() <= 3, "high threshold: 95% of 4 blocks");
    }
    assert_eq!(byte(&*mem, 0), 1, "the oldest was evicted and written back");
    for b in 0..20u64 {
        assert_eq!(byte(&c, b * BS + 5), b as u8 + 1);
    }
    let slots = c.lock().len();
    assert!(slots <= 3, "{slots}");
}

#[test]
fn cache_on_read_serves_repeated_reads_from_the_file() {
    let mem = Arc::new(MemoryBackend::new(64 * BS).unwrap());
    let stats = Arc::new(Stats::new(mem.clone(), None));
    let o = CacheOptions {
        on_read: Switch::Always(true),
        ..opts(CacheMode::Writeback)
    };
    let c = Cache::new(stats.clone(), Arc::new(o)).unwrap();
    let mut buf = vec![0; 10 * BS as usize];
    c.read_at(5, &mut buf).unwrap();
    c.read_at(5, &mut buf).unwrap();
    c.read_at(BS, &mut buf[..100]).unwrap();
    assert!(stats.report().contains("read: 1 ops"), "{}", stats.report());
    mem.write_at(BS, &[9], false).unwrap();
    assert_eq!(byte(&c, BS), 0, "stale by design: reads no longer go below");
    c.cache(40 * BS, 3 * BS).unwrap();
    assert!(stats.report().contains("read: 4 ops"), "{}", stats.report());
}

#[test]
fn dirty_blocks_are_data_in_extents() {
    let (_mem, c) = setup(opts(CacheMode::Writeback));
    c.write_at(3 * BS, &[1; 2 * BS as usize], false).unwrap();
    let mut out = [Extent::default(); 8];
    let n = c.extents(0, 64 * BS + 100, &mut out).unwrap();
    let hole = ExtentFlags::HOLE | ExtentFlags::ZERO;
    let got: Vec<_> = out[..n].iter().map(|e| (e.len, e.flags)).collect();
    assert_eq!(
        got,
        [
            (3 * BS, hole),
            (2 * BS, ExtentFlags::empty()),
            (59 * BS + 100, hole)
        ],
        "dirty blocks are data although the layer below has a hole"
    );
    let n = c.extents(3 * BS + 7, 3 * BS, &mut out).unwrap();
    assert_eq!((n, out[0].len, out[1].flags), (2, 2 * BS - 7, hole));
    c.write_zeroes(3 * BS, BS, ZeroFlags::MAY_TRIM).unwrap();
    assert_eq!(byte(&c, 3 * BS), 0);
    assert_eq!(byte(&c, 4 * BS), 1, "the dirty neighbour survived");
}

/// A client's own disk (as tmpdisk's handles are).
struct OwnDisk(MemoryBackend);

impl Backend for OwnDisk {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn caps(&self) -> Caps {
        self.0.caps()
    }
    fn per_client_data(&self) -> bool {
        true
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.0.write_at(offset, data, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.0.write_zeroes(offset, len, flags)
    }
}

#[test]
fn a_copy_over_a_clients_own_disk_has_its_own_private_cache() {
    let (_mem, c) = setup(opts(CacheMode::Writeback));
    assert!(c.caps().contains(Caps::MULTI_CONN));
    let other = Arc::new(OwnDisk(MemoryBackend::new(8192).unwrap()));
    let copy = crate::filters::Filter::reopen(&c, other).unwrap();
    assert_eq!(copy.size(), 8192);
    assert!(!copy.caps().contains(Caps::MULTI_CONN));
}

#[test]
fn copies_over_handles_of_one_disk_share_the_cache() {
    let (mem, c) = setup(opts(CacheMode::Writeback));
    let below: Arc<dyn Backend> = mem;
    let copy = crate::filters::Filter::reopen(&c, Arc::clone(&below)).unwrap();
    assert!(copy.caps().contains(Caps::MULTI_CONN));
    copy.write_at(BS, &[4; 512], false).unwrap();
    assert_eq!(byte(&c, BS), 4, "the dirty block is seen by the other copy");
    assert_eq!(byte(&*below, BS), 0, "writeback: not yet below");
}
