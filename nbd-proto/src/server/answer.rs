//! The caller's answers to negotiation questions, encoded as option replies
//! ([proto.md "Option types"], [proto.md "Option reply types"]).
//!
//! [proto.md "Option types"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-types
//! [proto.md "Option reply types"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-reply-types

use super::export::{BlockSizes, ExportInfo, Negotiated};
use super::handshake::{Handshake, State};
use super::meta::{self, NameHash};
use super::question::{ExportOption, ExportQuestion, ListQuestion, MetaQuestion, NeedRoom};
use crate::error::BufferTooSmall;
use crate::flags::TransmissionFlags;
use crate::types::{HeaderMode, OptReplyType, OptionCode};
use crate::wire::handshake::{ExportNameReply, Greeting, encode_option_reply};
use crate::wire::option::{Info, encode_server_entry};

/// Room that always holds the answer to an export question: four
/// `NBD_REP_INFO` replies (export, a 4096-byte name, a 4096-byte
/// description, block sizes) and the ACK.
pub const EXPORT_ANSWER_MAX: usize = 5 * 20 + 12 + 2 * (2 + crate::wire::MAX_STRING_LEN) + 14;

/// Flags a client may see: the export's own, filtered by the spec's rules,
/// plus those the negotiation adds.
fn advertised_flags(hs: &Handshake, info: &ExportInfo<'_>) -> TransmissionFlags {
    let mut f = info.flags
        & (TransmissionFlags::READ_ONLY
            | TransmissionFlags::SEND_FLUSH
            | TransmissionFlags::SEND_FUA
            | TransmissionFlags::ROTATIONAL
            | TransmissionFlags::SEND_TRIM
            | TransmissionFlags::SEND_WRITE_ZEROES
            | TransmissionFlags::SEND_FAST_ZERO
            | TransmissionFlags::CAN_MULTI_CONN
            | TransmissionFlags::SEND_RESIZE
            | TransmissionFlags::SEND_CACHE);
    f |= TransmissionFlags::HAS_FLAGS;
    // Checklist 33: FAST_ZERO only with WRITE_ZEROES; DF only once chunks
    // can be sent; BLOCK_STATUS_PAYLOAD only with extended headers.
    if !f.contains(TransmissionFlags::SEND_WRITE_ZEROES) {
        f.remove(TransmissionFlags::SEND_FAST_ZERO);
    }
    // A read-only export cannot change size (the RESIZE extension: EPERM).
    if f.contains(TransmissionFlags::READ_ONLY) {
        f.remove(TransmissionFlags::SEND_RESIZE);
    }
    if hs.structured || hs.extended {
        f |= TransmissionFlags::SEND_DF;
    }
    if hs.extended && hs.meta_selected != 0 {
        f |= TransmissionFlags::BLOCK_STATUS_PAYLOAD;
    }
    f
}

fn room<T>(token: T) -> impl FnOnce(BufferTooSmall) -> NeedRoom<T> {
    move |e| NeedRoom {
        required: e.required,
        token,
    }
}

impl Handshake {
    /// True when `serial` is the outstanding question's.
    fn is_current(&self, serial: u32) -> bool {
        let ok = serial == self.serial && self.is_answering();
        debug_assert!(ok, "answer to a question this connection did not ask");
        ok
    }

    pub(crate) fn answer_export(
        &mut self,
        q: ExportQuestion,
        answer: Result<ExportInfo<'_>, OptReplyType>,
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<ExportQuestion>> {
        if !self.is_current(q.serial) {
            return Ok(0);
        }
        let info = match answer {
            Ok(info) => info,
            Err(reply) => return self.refuse_export(q, reply, out),
        };
        let flags = advertised_flags(self, &info);
        match q.option {
            ExportOption::Oldstyle => {
                let g = Greeting::Oldstyle {
                    size: info.size,
                    flags,
                };
                let n = g.encode(out).map_err(room(q))?;
                self.finish(&info, flags, false, HeaderMode::Simple);
                Ok(n)
            }
            ExportOption::ExportName => {
                let reply = ExportNameReply {
                    size: info.size,
                    flags,
                    no_zeroes: self.no_zeroes,
                };
                let n = reply.encode(out).map_err(room(q))?;
                self.finish(&info, flags, false, self.mode());
                Ok(n)
            }
            ExportOption::Info | ExportOption::Go => {
                let n = self.encode_info(&q, &info, flags, out).map_err(room(q))?;
                Ok(n)
            }
        }
    }

    fn refuse_export(
        &mut self,
        q: ExportQuestion,
        reply: OptReplyType,
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<ExportQuestion>> {
        let option = match q.option {
            // EXPORT_NAME and oldstyle have no error reply: close.
            ExportOption::ExportName | ExportOption::Oldstyle => {
                self.state = State::Closed;
                return Ok(0);
            }
            ExportOption::Go => OptionCode::Go,
            ExportOption::Info => OptionCode::Info,
        };
        let n = encode_option_reply(option, reply, &[], out).map_err(room(q))?;
        self.state = State::Options;
        Ok(n)
    }

    fn encode_info(
        &mut self,
        q: &ExportQuestion,
        info: &ExportInfo<'_>,
        flags: TransmissionFlags,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let go = q.option == ExportOption::Go;
        let option = if go { OptionCode::Go } else { OptionCode::Info };
        let w = q.wanted;
        let mut items: [Option<Info<'_>>; 4] = [None; 4];
        items[0] = Some(Info::Export {
            size: info.size,
            flags,
        });
        if w.name {
            items[1] = Some(Info::Name(info.name));
        }
        if w.description && !info.description.is_empty() {
            items[2] = Some(Info::Description(info.description));
        }
        // Send constraints when asked, and unasked when they are not the
        // defaults (the spec lets servers send extra info).
        let sizes = match info.block_sizes {
            Some(b) if w.block_size || b != BlockSizes::DEFAULT => Some(b),
            None if w.block_size => Some(BlockSizes::DEFAULT),
            _ => None,
        };
        if let Some(b) = sizes {
            items[3] = Some(Info::BlockSize {
                minimum: b.minimum,
                preferred: b.preferred,
                maximum: b.maximum,
            });
        }
        let total: usize = items.iter().flatten().map(Info::encoded_len).sum::<usize>() + 20;
        if out.len() < total {
            return Err(BufferTooSmall { required: total });
        }
        let mut pos = 0;
        for item in items.iter().flatten() {
            pos += item.encode(option, out.get_mut(pos..).unwrap_or_default())?;
        }
        let ack = OptReplyType::Ack;
        pos += encode_option_reply(option, ack, &[], out.get_mut(pos..).unwrap_or_default())?;
        if go {
            self.finish(info, flags, w.block_size, self.mode());
        } else {
            self.state = State::Options;
        }
        Ok(pos)
    }

    fn finish(
        &mut self,
        info: &ExportInfo<'_>,
        flags: TransmissionFlags,
        agreed: bool,
        mode: HeaderMode,
    ) {
        // BLOCK_STATUS is allowed only if the last SET named this export
        // (proto.md "NBD_OPT_SET_META_CONTEXT"), by the name asked for or
        // its canonical name; and only for contexts the export offers.
        let same_export = self.meta_export.is_some_and(|h| {
            h == NameHash::of(self.asked.as_str()) || h == NameHash::of(info.name)
        });
        let meta = if same_export {
            self.meta_selected & info.meta_contexts
        } else {
            0
        };
        self.state = State::Done(Negotiated {
            mode,
            size: info.size,
            flags,
            block_sizes: info.block_sizes.unwrap_or(BlockSizes::DEFAULT),
            block_sizes_agreed: agreed,
            meta_contexts: meta,
            tls: self.tls_active(),
        });
    }

    pub(crate) fn list_entry(
        &mut self,
        q: &ListQuestion,
        name: &str,
        description: &str,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        if !self.is_current(q.serial) {
            return Ok(0);
        }
        encode_server_entry(name, description, out)
    }

    pub(crate) fn finish_list(
        &mut self,
        q: ListQuestion,
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<ListQuestion>> {
        if !self.is_current(q.serial) {
            return Ok(0);
        }
        let n =
            encode_option_reply(OptionCode::List, OptReplyType::Ack, &[], out).map_err(room(q))?;
        self.state = State::Options;
        Ok(n)
    }

    pub(crate) fn answer_meta(
        &mut self,
        q: MetaQuestion,
        offered: Result<u64, OptReplyType>,
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<MetaQuestion>> {
        if !self.is_current(q.serial) {
            return Ok(0);
        }
        let option = if q.list {
            OptionCode::ListMetaContext
        } else {
            OptionCode::SetMetaContext
        };
        let n = match offered {
            Ok(offered) => {
                let chosen = q.matched & offered;
                let n = meta::encode_answer(option, chosen, self.cfg.meta_contexts, out)
                    .map_err(room(q))?;
                if option == OptionCode::SetMetaContext {
                    self.meta_selected = chosen;
                    self.meta_export = Some(NameHash::of(self.asked.as_str()));
                }
                n
            }
            Err(reply) => encode_option_reply(option, reply, &[], out).map_err(room(q))?,
        };
        self.state = State::Options;
        Ok(n)
    }
}
