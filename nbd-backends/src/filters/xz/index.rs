//! Where the blocks of an `.xz` file are: its stream footers and indexes,
//! read from the end (xz file format 1.0: stream header and footer of 12
//! bytes, the index's variable-length records, stream padding). Every
//! number from the file is checked before it is used: a hostile index
//! cannot make us read outside the file or allocate without bound.

use crate::Backend;

/// Stream header and footer size.
const HEADER: u64 = 12;
const MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
/// Largest index read (a million blocks take about 10 MiB).
const MAX_INDEX: u64 = 64 << 20;
/// Stream padding skipped at most (it is normally a few bytes).
const MAX_PADDING: u64 = 1 << 20;

/// One block: where its bytes are and what they decompress to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Block {
    /// Offset of the block in the file.
    pub(super) offset: u64,
    /// Bytes it occupies (block header, data, padding, check).
    pub(super) len: u64,
    /// Offset of its data in the uncompressed image.
    pub(super) uoffset: u64,
    /// Uncompressed size.
    pub(super) usize: u64,
    /// Index into [`Index::headers`] of its stream's header.
    pub(super) stream: usize,
}

/// Every block of every stream, in image order.
#[derive(Debug)]
pub(super) struct Index {
    pub(super) blocks: Vec<Block>,
    /// Each stream's 12-byte header (the decoder needs it first).
    pub(super) headers: Vec<[u8; 12]>,
    /// Uncompressed size.
    pub(super) size: u64,
}

fn read(b: &dyn Backend, at: u64, len: u64) -> Result<Vec<u8>, String> {
    let mut v = vec![0u8; len as usize];
    b.read_at(at, &mut v)
        .map_err(|e| format!("reading at {at}: {e}"))?;
    Ok(v)
}

/// A variable-length integer (at most 9 bytes, below 2^63).
fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *buf.get(*pos).ok_or("index ends inside a number")?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err("index number is not minimally encoded".into());
            }
            return Ok(v);
        }
    }
    Err("index number longer than 9 bytes".into())
}

/// A stream: where it starts, its header, and `(file offset, length,
/// uncompressed size)` per block.
type Stream = (u64, [u8; 12], Vec<(u64, u64, u64)>);

/// Parse the stream ending at `end`.
fn stream(b: &dyn Backend, end: u64) -> Result<Stream, String> {
    if end < 2 * HEADER {
        return Err("file too small for an xz stream".into());
    }
    let footer = read(b, end - HEADER, HEADER)?;
    if footer[10..12] != *b"YZ" {
        return Err("no xz stream footer (is this an .xz file?)".into());
    }
    let backward = (u64::from(u32::from_le_bytes([
        footer[4], footer[5], footer[6], footer[7],
    ])) + 1)
        * 4;
    if backward > MAX_INDEX || backward + 2 * HEADER > end {
        return Err(format!("index of {backward} bytes does not fit"));
    }
    let index_at = end - HEADER - backward;
    let index = read(b, index_at, backward)?;
    if index[0] != 0 {
        return Err("bad index indicator".into());
    }
    let mut pos = 1;
    let count = varint(&index, &mut pos)?;
    // Each record takes at least two bytes.
    if count > backward / 2 {
        return Err(format!("index claims {count} blocks in {backward} bytes"));
    }
    let mut records = Vec::with_capacity(count as usize);
    let mut total = 0u64;
    for _ in 0..count {
        let unpadded = varint(&index, &mut pos)?;
        let usize = varint(&index, &mut pos)?;
        if unpadded < 5 {
            return Err("block smaller than its header".into());
        }
        let len = unpadded
            .checked_next_multiple_of(4)
            .ok_or("block too large")?;
        records.push((total, len, usize));
        total = total.checked_add(len).ok_or("blocks too large")?;
    }
    let blocks_at = index_at
        .checked_sub(total)
        .and_then(|x| x.checked_sub(HEADER))
        .ok_or("blocks do not fit before the index")?;
    let header = read(b, blocks_at, HEADER)?;
    if header[..6] != MAGIC || header[6..8] != footer[8..10] {
        return Err("stream header missing or does not match its footer".into());
    }
    let mut h = [0u8; 12];
    h.copy_from_slice(&header);
    let blocks = records
        .into_iter()
        .map(|(rel, len, usize)| (blocks_at + HEADER + rel, len, usize))
        .collect();
    Ok((blocks_at, h, blocks))
}

/// Every stream of the file, from the end.
pub(super) fn read_index(b: &dyn Backend) -> Result<Index, String> {
    let mut end = b.size();
    if !end.is_multiple_of(4) {
        return Err("not an xz file (its size is not a multiple of 4)".into());
    }
    let mut streams = Vec::new();
    while end > 0 {
        let mut skipped = 0;
        while end >= 4 && read(b, end - 4, 4)? == [0; 4] {
            end -= 4;
            skipped += 4;
            if skipped > MAX_PADDING {
                return Err("more than 1 MiB of stream padding".into());
            }
        }
        if end == 0 {
            break;
        }
        let (start, header, blocks) = stream(b, end)?;
        streams.push((header, blocks));
        end = start;
    }
    if streams.is_empty() {
        return Err("no xz stream footer (is this an .xz file?)".into());
    }
    streams.reverse();
    let mut index = Index {
        blocks: Vec::new(),
        headers: Vec::new(),
        size: 0,
    };
    for (i, (header, blocks)) in streams.into_iter().enumerate() {
        index.headers.push(header);
        for (offset, len, usize) in blocks {
            if usize == 0 {
                continue;
            }
            index.blocks.push(Block {
                offset,
                len,
                uoffset: index.size,
                usize,
                stream: i,
            });
            index.size = index
                .size
                .checked_add(usize)
                .filter(|&s| s <= crate::MAX_SIZE)
                .ok_or("uncompressed size above 2^63")?;
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut p = 0;
        assert_eq!(varint(&[0x7f], &mut p), Ok(127));
        let mut p = 0;
        assert_eq!(varint(&[0x80, 0x01], &mut p), Ok(128));
        let mut p = 0;
        assert!(varint(&[0x80, 0x00], &mut p).is_err(), "not minimal");
        let mut p = 0;
        assert!(varint(&[0xff; 10], &mut p).is_err());
        let mut p = 0;
        assert!(varint(&[0x80], &mut p).is_err());
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        let m = crate::MemoryBackend::new(4096).unwrap();
        assert!(read_index(&m).unwrap_err().contains("footer"));
        m.write_at(4096 - 2, b"YZ", false).unwrap();
        m.write_at(4096 - 8, &[0xff, 0xff, 0xff, 0x0f], false)
            .unwrap();
        assert!(read_index(&m).unwrap_err().contains("does not fit"));
        let tiny = crate::MemoryBackend::new(3).unwrap();
        assert!(read_index(&tiny).is_err());
        let zeroes = crate::MemoryBackend::new(64).unwrap();
        assert!(read_index(&zeroes).unwrap_err().contains("footer"));
    }
}
