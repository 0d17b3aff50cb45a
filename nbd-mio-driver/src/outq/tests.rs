//! Unit tests of the output queue.
use super::OutQueue;

#[test]
fn small_replies_share_a_chunk_and_leave_in_one_write() {
    let mut q = OutQueue::default();
    q.extend(b"abc");
    q.extend(b"defg");
    let mut out = Vec::new();
    q.write_to(&mut out).unwrap();
    assert_eq!(out, b"abcdefg");
    assert!(q.is_empty());
}

#[test]
fn a_pushed_vec_is_sent_in_place_and_storage_comes_back() {
    let mut q = OutQueue::default();
    q.extend(b"head");
    let mut v = b"xxDATAyy".to_vec();
    q.push_vec(&mut v, 2, 6);
    q.extend(b"tail");
    assert_eq!(q.len(), 12);
    let mut out = Vec::new();
    q.write_to(&mut out).unwrap();
    assert_eq!(out, b"headDATAtail");
    // The pushed buffer was recycled: the next push hands it back.
    let mut w = Vec::new();
    q.push_vec(&mut w, 0, 0);
    assert!(!w.is_empty(), "a recycled chunk, not a fresh Vec");
}

#[test]
fn partial_writes_resume_where_they_stopped() {
    struct Trickle(Vec<u8>);
    impl std::io::Write for Trickle {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = b.len().min(3);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut q = OutQueue::default();
    for part in [&b"0123456789"[..], b"abcdef"] {
        q.extend(part);
    }
    let mut big = vec![7u8; 100_000];
    q.push_vec(&mut big, 0, 100_000);
    let mut t = Trickle(Vec::new());
    q.write_to(&mut t).unwrap();
    assert_eq!(&t.0[..16], b"0123456789abcdef");
    assert_eq!(t.0.len(), 16 + 100_000);
}

#[test]
fn chunks_come_in_few_sizes() {
    use super::{CHUNK, FIRST_CHUNK, size_class};
    assert_eq!(size_class(1), FIRST_CHUNK);
    assert_eq!(size_class(4097), 8192);
    assert_eq!(size_class(CHUNK), CHUNK);
    assert_eq!(size_class(CHUNK + 1), 2 * CHUNK);
    assert_eq!(size_class((1 << 20) + 32), (1 << 20) + CHUNK);
}

#[test]
fn front_skips_a_reserved_but_empty_segment() {
    let mut q = OutQueue::default();
    q.spare(10);
    q.commit(0);
    let mut v = b"data".to_vec();
    q.push_vec(&mut v, 0, 4);
    assert_eq!(q.front(), b"data");
    q.consume(4);
    assert!(q.is_empty() && q.front().is_empty());
}

#[test]
fn large_reservations_get_their_own_chunk_and_are_recycled() {
    let mut q = OutQueue::default();
    let s = q.spare(1 << 20);
    assert!(s.len() >= 1 << 20);
    q.commit(1 << 20);
    let mut out = Vec::new();
    q.write_to(&mut out).unwrap();
    let held = q.capacity();
    assert!(held >= 1 << 20, "the chunk is kept for the next reply");
    q.spare(1 << 20);
    assert_eq!(q.capacity(), held, "reused, not reallocated");
    q.commit(0);
    q.consume(0);
    q.release();
    assert_eq!(q.capacity(), 0, "idle: nothing kept");
}

/// Lent pages leave in order with the bytes around them, across partial
/// writes that stop inside a piece, and their list comes back for reuse.
#[test]
fn lent_pieces_are_sent_in_place_across_partial_writes() {
    use nbd_backends::Piece;
    use std::sync::Arc;
    struct Trickle(Vec<u8>);
    impl std::io::Write for Trickle {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = b.len().min(1000);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let page = Arc::new([7u8; 4096]);
    let mut q = OutQueue::default();
    assert!(q.lends());
    q.extend(b"head");
    let mut list = q.lent_list(3);
    list.extend([
        Piece::of(&page, 100..4096),
        Piece::zero(50),
        Piece::of(&page, 0..10),
    ]);
    q.push_lent(list);
    q.extend(b"tail");
    let total = 4 + 3996 + 50 + 10 + 4;
    assert_eq!(q.len(), total);
    assert_eq!(q.tail(6).unwrap(), [7, 7, b't', b'a', b'i', b'l']);
    let mut t = Trickle(Vec::new());
    q.write_to(&mut t).unwrap();
    let mut want = b"head".to_vec();
    want.extend([7; 3996]);
    want.extend([0; 50]);
    want.extend([7; 10]);
    want.extend(b"tail");
    assert_eq!(t.0, want);
    assert!(q.is_empty());
    assert_eq!(Arc::strong_count(&page), 1, "sent pages are released");
    assert!(q.lent_list(0).capacity() >= 3, "the list is recycled");
    q.copy_only();
    assert!(!q.lends());
}
