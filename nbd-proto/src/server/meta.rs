//! Meta-context matching ([proto.md "Metadata querying"], "`base:` meta
//! context"), the fixed-capacity buffer holding the export name a question
//! is about, and the fingerprint of the export the last
//! `NBD_OPT_SET_META_CONTEXT` named.
//!
//! [proto.md "Metadata querying"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#metadata-querying

use crate::error::BufferTooSmall;
use crate::types::{OptReplyType, OptionCode};
use crate::wire::MAX_STRING_LEN;
use crate::wire::handshake::encode_option_reply;
use crate::wire::option::{MetaContextRequest, encode_meta_context};

/// An export name copied inline, so questions borrow nothing (the
/// handshake is not a hot path).
#[derive(Debug, Clone)]
pub(crate) struct NameBuf {
    buf: [u8; MAX_STRING_LEN],
    len: usize,
}

impl NameBuf {
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; MAX_STRING_LEN],
            len: 0,
        }
    }

    pub(crate) fn set(&mut self, name: &str) {
        let b = name.as_bytes();
        // Names were validated to be at most MAX_STRING_LEN bytes; a
        // longer one would be cut at a character boundary.
        let mut n = b.len().min(MAX_STRING_LEN);
        while !name.is_char_boundary(n) {
            n -= 1;
        }
        if let (Some(dst), Some(src)) = (self.buf.get_mut(..n), b.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.len = n;
    }

    /// The stored name ("" when none).
    pub(crate) fn as_str(&self) -> &str {
        let b = self.buf.get(..self.len).unwrap_or_default();
        // Only `&str`s are stored, cut at a character boundary.
        core::str::from_utf8(b).unwrap_or_default()
    }
}

/// A fingerprint of an export name (FNV-1a, 64 bits, plus the length):
/// enough to tell whether GO names the export the last SET named. A
/// collision could only hand a client the selection it made for another
/// name, which
/// [`ExportInfo::meta_contexts`](crate::server::ExportInfo::meta_contexts)
/// still filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NameHash(u64, usize);

impl NameHash {
    pub(crate) fn of(name: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self(h, name.len())
    }
}

/// Does `query` pick `context`? In LIST an empty leaf (`ns:`) is a
/// wildcard for the namespace; in SET only exact names select.
fn matches(list: bool, query: &str, context: &str) -> bool {
    if query == context {
        return true;
    }
    list && query.ends_with(':')
        && query.find(':') == Some(query.len() - 1)
        && context.starts_with(query)
}

/// The catalogue entries (bit i = `catalogue[i]`, at most 64) that the
/// request's queries name, by the spec's matching rules: unknown
/// namespaces and leaves are ignored, an empty leaf lists a namespace but
/// never selects, zero queries list everything or select nothing
/// ([proto.md "Metadata querying"]).
///
/// [proto.md "Metadata querying"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#metadata-querying
pub(crate) fn matched(list: bool, request: &MetaContextRequest<'_>, catalogue: &[&str]) -> u64 {
    let mut selected = 0u64;
    for (i, ctx) in catalogue.iter().enumerate().take(64) {
        let hit = if request.query_count() == 0 {
            list
        } else {
            request.queries().any(|q| matches(list, q, ctx))
        };
        if hit {
            selected |= 1 << i;
        }
    }
    selected
}

/// Encode the replies naming the contexts of `chosen` (bit i =
/// `catalogue[i]`, ID i + 1), then the ACK.
pub(crate) fn encode_answer(
    option: OptionCode,
    chosen: u64,
    catalogue: &[&str],
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let list = option == OptionCode::ListMetaContext;
    let mut pos = 0;
    let grow = |pos: usize| {
        move |e: BufferTooSmall| BufferTooSmall {
            required: pos + e.required,
        }
    };
    for (i, ctx) in catalogue.iter().enumerate().take(64) {
        if chosen & (1 << i) != 0 {
            // LIST replies carry ID 0 (the field is reserved there).
            let id = if list { 0 } else { i as u32 + 1 };
            pos += encode_meta_context(option, id, ctx, out.get_mut(pos..).unwrap_or_default())
                .map_err(grow(pos))?;
        }
    }
    let ack = OptReplyType::Ack;
    pos += encode_option_reply(option, ack, &[], out.get_mut(pos..).unwrap_or_default())
        .map_err(grow(pos))?;
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn checklist_41_45_46_base_matching() {
        assert!(matches(true, "base:", "base:allocation"));
        assert!(!matches(false, "base:", "base:allocation"));
        assert!(matches(false, "base:allocation", "base:allocation"));
        assert!(!matches(false, "base:nonexistent", "base:allocation"));
        assert!(!matches(true, "foo:bar", "base:allocation"));
        assert!(!matches(
            true,
            "qemu:dirty-bitmap:",
            "qemu:allocation-depth"
        ));
    }
}
