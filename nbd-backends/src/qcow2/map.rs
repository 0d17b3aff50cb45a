//! Block status from imago's mappings: `base:allocation` extents from the
//! resolved mapping, `qemu:allocation-depth` from walking the chain layer
//! by layer.

use std::io;

use imago::file::File;
use imago::{FormatAccess, Mapping, ShallowMapping};

use super::open::MAX_CHAIN;
use crate::util::{out_of_range, push_depth, push_extent};
use crate::{DepthExtent, Extent, ExtentFlags};

/// `[offset, end)` clipped to the image, or EINVAL past its end.
fn range(img: &FormatAccess<File>, offset: u64, len: u64) -> io::Result<u64> {
    let size = img.size();
    if offset > size {
        return Err(out_of_range());
    }
    Ok(offset.saturating_add(len).min(size))
}

/// A mapping of no length that is not the end of the image: never loop on it.
fn stuck() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "image mapping made no progress")
}

/// `base:allocation` as qemu-nbd reports it: zero clusters and ranges
/// allocated nowhere in the chain are holes reading as zeroes; data and
/// compressed clusters (in any layer) are data.
pub(super) fn extents(
    img: &FormatAccess<File>,
    offset: u64,
    len: u64,
    out: &mut [Extent],
) -> io::Result<usize> {
    let end = range(img, offset, len)?;
    let (mut n, mut pos) = (0, offset);
    while pos < end {
        let (m, l) = img.get_mapping(pos, end - pos)?;
        let flags = match m {
            Mapping::Eof { .. } => break,
            Mapping::Zero { .. } => ExtentFlags::HOLE | ExtentFlags::ZERO,
            _ => ExtentFlags::empty(),
        };
        let l = l.min(end - pos);
        if l == 0 {
            return Err(stuck());
        }
        if !push_extent(out, &mut n, l, flags) {
            break;
        }
        pos += l;
    }
    Ok(n)
}

/// `qemu:allocation-depth` (qemu's `bdrv_is_allocated_above` numbering):
/// 1 where the image itself has data, a compressed or a zero cluster; k+1
/// where the first layer holding it is k backing images down; 0 where no
/// layer has it. Past the end of a shorter backing image, qemu counts the
/// zeroes it synthesises as allocated in that short layer; so do we.
pub(super) fn depths(
    img: &FormatAccess<File>,
    offset: u64,
    len: u64,
    out: &mut [DepthExtent],
) -> io::Result<usize> {
    let end = range(img, offset, len)?;
    let (mut n, mut pos) = (0, offset);
    while pos < end {
        let (depth, l) = depth_at(img, pos, end - pos)?;
        if l == 0 {
            break;
        }
        if !push_depth(out, &mut n, l, depth) {
            break;
        }
        pos += l;
    }
    Ok(n)
}

/// Depth at `pos` and for how many bytes (at most `max`) it holds; a
/// length of 0 is the top image's end.
fn depth_at(top: &FormatAccess<File>, pos: u64, max: u64) -> io::Result<(u32, u64)> {
    let (mut layer, mut off, mut max, mut depth) = (top, pos, max, 1u32);
    loop {
        let (m, l) = layer.get_shallow_mapping(off, max)?;
        match m {
            ShallowMapping::Eof { .. } if depth == 1 => return Ok((0, 0)),
            ShallowMapping::Eof { .. } => return Ok((depth, max)),
            ShallowMapping::Indirect {
                layer: next,
                offset: o,
                ..
            } => {
                if l == 0 {
                    return Err(stuck());
                }
                if depth >= MAX_CHAIN {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "backing chain too deep",
                    ));
                }
                (layer, off, max, depth) = (next, o, l.min(max), depth + 1);
            }
            _ if l == 0 => return Err(stuck()),
            ShallowMapping::Zero {
                explicit: false, ..
            } => return Ok((0, l.min(max))),
            _ => return Ok((depth, l.min(max))),
        }
    }
}
