//! Server-side state machines: negotiation ([`Handshake`]) and
//! transmission ([`Transmission`]).

mod export;
mod handshake;
mod meta;
mod transmission;

pub use export::{BlockSizes, ExportInfo, Negotiated, TlsMode};
pub use handshake::{ExportQuery, Handshake, HandshakeConfig, HandshakeEvent, MetaQuery};
pub use transmission::{Incoming, Transmission, TransmissionConfig};
