//! Unit tests of the memory backend: allocation, freeing, extents, resize.

use super::*;

#[test]
fn sparse_allocation_and_freeing() {
    let m = MemoryBackend::new(1 << 40).unwrap();
    assert_eq!(m.allocated_bytes(), 0);
    // A zero write to an absent page allocates nothing.
    m.write_at(100, &[0; 10], false).unwrap();
    assert_eq!(m.allocated_bytes(), 0);
    // Straddling a boundary allocates the two pages touched.
    m.write_at(PAGE - 1, &[1, 2], false).unwrap();
    assert_eq!(m.allocated_bytes(), 2 * PAGE);
    // A whole-page zero write frees the page.
    m.write_at(PAGE, &[0; PAGE_SIZE], false).unwrap();
    assert_eq!(m.allocated_bytes(), PAGE);
    // Zeroing the last non-zero byte of a page frees it.
    m.write_zeroes(PAGE - 1, 1, ZeroFlags::empty()).unwrap();
    assert_eq!(m.allocated_bytes(), 0);
}

#[test]
fn zero_range_partial_pages_keep_other_bytes() {
    let m = MemoryBackend::new(4 * PAGE).unwrap();
    m.write_at(0, &[7; 4 * PAGE_SIZE], false).unwrap();
    m.trim(10, 3 * PAGE, false).unwrap();
    let mut buf = vec![0xaa; 4 * PAGE_SIZE];
    m.read_at(0, &mut buf).unwrap();
    assert!(buf[..10].iter().all(|&b| b == 7));
    assert!(buf[10..10 + 3 * PAGE_SIZE].iter().all(|&b| b == 0));
    assert!(buf[10 + 3 * PAGE_SIZE..].iter().all(|&b| b == 7));
    // Pages 1 and 2 were freed, 0 and 3 kept.
    assert_eq!(m.allocated_bytes(), 2 * PAGE);
}

#[test]
fn shrink_zeroes_the_tail_of_the_last_page() {
    let m = MemoryBackend::new(3 * PAGE).unwrap();
    m.write_at(0, &[9; 3 * PAGE_SIZE], false).unwrap();
    m.resize(PAGE + 5).unwrap();
    assert_eq!(m.allocated_bytes(), 2 * PAGE);
    m.resize(3 * PAGE).unwrap();
    let mut buf = vec![0xaa; 3 * PAGE_SIZE];
    m.read_at(0, &mut buf).unwrap();
    assert!(buf[..PAGE_SIZE + 5].iter().all(|&b| b == 9));
    assert!(buf[PAGE_SIZE + 5..].iter().all(|&b| b == 0));
}

#[test]
fn extents_merge_and_stop_when_full() {
    let m = MemoryBackend::new(10 * PAGE).unwrap();
    m.write_at(2 * PAGE, &[1; 2 * PAGE_SIZE], false).unwrap();
    m.write_at(7 * PAGE + 1, &[1], false).unwrap();
    let mut out = [Extent::default(); 8];
    let n = m.extents(PAGE / 2, 10 * PAGE, &mut out).unwrap();
    let hz = ExtentFlags::HOLE | ExtentFlags::ZERO;
    let d = ExtentFlags::empty();
    let want = [
        (PAGE + PAGE / 2, hz),
        (2 * PAGE, d),
        (3 * PAGE, hz),
        (PAGE, d),
        (2 * PAGE, hz),
    ];
    let got: Vec<_> = out[..n].iter().map(|e| (e.len, e.flags)).collect();
    assert_eq!(got, want);
    let mut two = [Extent::default(); 2];
    assert_eq!(m.extents(0, 10 * PAGE, &mut two).unwrap(), 2);
    assert_eq!(
        two[1],
        Extent {
            len: 2 * PAGE,
            flags: d
        }
    );
}

#[test]
fn huge_sizes_are_accepted_and_bounded() {
    let m = MemoryBackend::new(MAX_SIZE).unwrap();
    m.write_at(MAX_SIZE - 3, &[1, 2, 3], false).unwrap();
    let mut b = [0; 3];
    m.read_at(MAX_SIZE - 3, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3]);
    assert!(m.write_at(MAX_SIZE - 2, &[1, 2, 3], false).is_err());
    assert!(m.read_at(u64::MAX, &mut b).is_err());
    assert!(MemoryBackend::new(MAX_SIZE + 1).is_err());
}

#[test]
fn zero_scan_sees_one_byte_anywhere() {
    for len in [0, 1, 7, 63, 64, 65, 200, 4095, 4096] {
        let mut v = vec![0u8; len];
        assert!(is_zero(&v));
        for i in 0..len {
            v[i] = 0x80;
            assert!(!is_zero(&v), "byte {i} of {len}");
            v[i] = 0;
        }
    }
}

/// Walks skip what was never written: a page-by-page or leaf-by-leaf walk
/// of a 2^63-byte export would never finish.
#[test]
fn extents_trim_and_shrink_of_a_huge_export_skip_untouched_space() {
    let m = MemoryBackend::new(MAX_SIZE).unwrap();
    let mid = 1u64 << 62;
    m.write_at(mid + 1, &[1], false).unwrap();
    m.write_at(MAX_SIZE - 1, &[2], false).unwrap();
    let mut out = [Extent::default(); 8];
    let n = m.extents(0, MAX_SIZE, &mut out).unwrap();
    let hz = ExtentFlags::HOLE | ExtentFlags::ZERO;
    let last_page = (MAX_SIZE - 1) / PAGE * PAGE;
    let want = [
        (mid, hz),
        (PAGE, ExtentFlags::empty()),
        (last_page - mid - PAGE, hz),
        (MAX_SIZE - last_page, ExtentFlags::empty()),
    ];
    let got: Vec<_> = out[..n].iter().map(|e| (e.len, e.flags)).collect();
    assert_eq!(got, want);
    m.trim(0, mid + PAGE, false).unwrap();
    assert_eq!(m.allocated_bytes(), PAGE);
    m.resize(PAGE).unwrap();
    assert_eq!(m.allocated_bytes(), 0);
    m.resize(MAX_SIZE).unwrap();
    let mut b = [9u8; 1];
    m.read_at(MAX_SIZE - 1, &mut b).unwrap();
    assert_eq!(b, [0]);
}

/// Zero-copy READs (`read_lent`): the pieces hold the bytes `read_at`
/// returns, holes lend zeroes, and a write or trim after the READ does not
/// change what the reply holds (the page is copied first), while later
/// READs see the write.
#[test]
fn lent_pieces_keep_the_bytes_the_read_saw() {
    let m = MemoryBackend::new(1 << 20).unwrap();
    let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i % 251) as u8 + 1).collect();
    m.write_at(PAGE, &data, false).unwrap();
    let (offset, len) = (PAGE - 100, 3 * PAGE_SIZE + 200);
    let mut pieces = Vec::new();
    m.read_lent(offset, len, &mut pieces).unwrap().unwrap();
    assert_eq!(pieces.len(), crate::lent::pieces_for(offset, len));
    let lent: Vec<u8> = pieces.iter().flat_map(|p| p.bytes().to_vec()).collect();
    let mut copied = vec![0; len];
    m.read_at(offset, &mut copied).unwrap();
    assert_eq!(lent, copied);
    assert!(
        lent[..100].iter().all(|&b| b == 0),
        "the hole before lends zeroes"
    );
    // Overwrite, trim and zero what the pieces hold.
    m.write_at(PAGE, &vec![0xee; PAGE_SIZE], false).unwrap();
    m.trim(2 * PAGE, PAGE, false).unwrap();
    m.write_zeroes(3 * PAGE + 10, 20, crate::ZeroFlags::empty())
        .unwrap();
    let still: Vec<u8> = pieces.iter().flat_map(|p| p.bytes().to_vec()).collect();
    assert_eq!(still, copied, "a lent page changed under its reply");
    let mut now = vec![0; PAGE_SIZE];
    m.read_at(PAGE, &mut now).unwrap();
    assert_eq!(now, vec![0xee; PAGE_SIZE]);
    assert!(m.read_lent(1 << 20, 1, &mut pieces).unwrap().is_err());
}

fn page_of(byte: u8) -> Option<Arc<Page>> {
    Some(Arc::new([byte; PAGE_SIZE]))
}

/// Zero-copy WRITEs: pages are taken, the ones they replace come back,
/// zero pages make holes, and a lent READ keeps what it saw.
#[test]
fn write_pages_swaps_pages_in() {
    let m = MemoryBackend::new(8 * PAGE).unwrap();
    assert!(m.takes_pages());
    m.write_at(PAGE, &[1; PAGE_SIZE], false).unwrap();
    let mut lent = Vec::new();
    m.read_lent(PAGE, PAGE_SIZE, &mut lent).unwrap().unwrap();

    let mut pages = [page_of(2), page_of(3), page_of(0)];
    m.write_pages(0, &mut pages, false).unwrap();
    // Page 0 was a hole: nothing comes back. Page 1 held 1s: they come
    // back. Page 2's zeros were not kept: the caller has its page again.
    assert!(pages[0].is_none());
    assert_eq!(pages[1].as_deref().map(|p| p[0]), Some(1));
    assert_eq!(pages[2].as_deref().map(|p| p[0]), Some(0));
    let mut buf = vec![0xaa; 3 * PAGE_SIZE];
    m.read_at(0, &mut buf).unwrap();
    assert!(buf[..PAGE_SIZE].iter().all(|&b| b == 2));
    assert!(buf[PAGE_SIZE..2 * PAGE_SIZE].iter().all(|&b| b == 3));
    assert!(buf[2 * PAGE_SIZE..].iter().all(|&b| b == 0));
    assert_eq!(m.allocated_bytes(), 2 * PAGE);
    // The READ lent before the write still has its bytes.
    assert!(lent.iter().all(|p| p.bytes().iter().all(|&b| b == 1)));

    // A zero page over data frees it.
    let mut zero = [page_of(0)];
    m.write_pages(PAGE, &mut zero, false).unwrap();
    assert_eq!(m.allocated_bytes(), PAGE);
}

#[test]
fn write_pages_checks_its_range() {
    let m = MemoryBackend::new(2 * PAGE).unwrap();
    let mut pages = [page_of(1)];
    let e = m.write_pages(1, &mut pages, false).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(m.write_pages(2 * PAGE, &mut pages, false).is_err());
    assert!(
        pages[0].is_some(),
        "a refused write keeps the caller's page"
    );
    assert_eq!(m.allocated_bytes(), 0);
}
