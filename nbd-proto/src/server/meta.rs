//! Meta-context matching (proto.md "Metadata querying", "`base:` meta
//! context") and the fixed-capacity name buffer that remembers which export
//! the last `NBD_OPT_SET_META_CONTEXT` named.

use super::handshake::MetaQuery;
use crate::error::BufferTooSmall;
use crate::types::{OptReplyType, OptionCode};
use crate::wire::MAX_STRING_LEN;
use crate::wire::handshake::encode_option_reply;
use crate::wire::option::encode_meta_context;

/// An export name copied inline (the handshake is not a hot path, and a
/// borrow could not outlive the input buffer).
#[derive(Debug, Clone)]
pub(crate) struct NameBuf {
    buf: [u8; MAX_STRING_LEN],
    len: usize,
    set: bool,
}

impl NameBuf {
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; MAX_STRING_LEN],
            len: 0,
            set: false,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.set = false;
    }

    pub(crate) fn set(&mut self, name: &str) {
        let b = name.as_bytes();
        // Names were validated to be at most MAX_STRING_LEN bytes.
        let n = b.len().min(MAX_STRING_LEN);
        if let (Some(dst), Some(src)) = (self.buf.get_mut(..n), b.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.len = n;
        self.set = true;
    }

    pub(crate) fn eq_str(&self, name: &str) -> bool {
        self.set && self.buf.get(..self.len) == Some(name.as_bytes())
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

/// Encode the replies to a LIST/SET_META_CONTEXT and return the selection
/// bitmask (bit i = `offered[i]`, ID i + 1) and the bytes written.
pub(crate) fn answer(
    option: OptionCode,
    query: &MetaQuery<'_>,
    offered: &[&str],
    out: &mut [u8],
) -> Result<(u64, usize), BufferTooSmall> {
    let mut selected = 0u64;
    for (i, ctx) in offered.iter().enumerate().take(64) {
        let hit = if query.request.query_count() == 0 {
            // Zero queries: LIST returns everything, SET selects nothing.
            query.list
        } else {
            query.request.queries().any(|q| matches(query.list, q, ctx))
        };
        if hit {
            selected |= 1 << i;
        }
    }
    let mut pos = 0;
    for (i, ctx) in offered.iter().enumerate().take(64) {
        if selected & (1 << i) != 0 {
            // LIST replies carry ID 0 (the field is reserved there).
            let id = if query.list { 0 } else { i as u32 + 1 };
            pos += encode_meta_context(option, id, ctx, out.get_mut(pos..).unwrap_or_default())
                .map_err(|e| BufferTooSmall {
                    required: pos + e.required,
                })?;
        }
    }
    pos += encode_option_reply(
        option,
        OptReplyType::Ack,
        &[],
        out.get_mut(pos..).unwrap_or_default(),
    )
    .map_err(|e| BufferTooSmall {
        required: pos + e.required,
    })?;
    Ok((if query.list { 0 } else { selected }, pos))
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
