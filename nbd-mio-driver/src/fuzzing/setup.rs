//! The server's configuration and exports, read from the first bytes of
//! the fuzz input.

use std::sync::Arc;
use std::time::Duration;

use nbd_backends::filters::Delay;
use nbd_backends::fuzzing::{Input, stack};
use nbd_backends::{Backend, Export, ExportPolicy, ExportSet};
use nbd_proto::server::{ConnectionConfig, HandshakeConfig, TlsMode};

use crate::conn::{ConnConfig, Limits, META_CONTEXTS};

/// What one run serves.
pub struct Setup {
    pub cfg: ConnConfig,
    /// The loop has a (thread-less) worker pool and every export runs on
    /// it: each stack is topped with a zero delay filter, which says
    /// `Execution::Blocking` (else a memory stack runs inline).
    pub pool: bool,
}

/// Byte 0: handshake features (bit clear = the default on); byte 1: TLS
/// policy, pool, export count, any-name, a small memory budget; then per
/// export a policy byte and a filter stack.
pub fn read(input: &mut Input<'_>) -> Option<Setup> {
    let features = input.u8();
    let other = input.u8();
    let oldstyle = features & 0xc0 == 0xc0;
    let handshake = HandshakeConfig {
        tls: match other % 3 {
            0 => TlsMode::Off,
            1 => TlsMode::On,
            // As the command line: `-o` refuses --tls=require.
            _ if oldstyle => TlsMode::On,
            _ => TlsMode::Require,
        },
        fixed_newstyle: features & 1 == 0,
        no_zeroes: features & 2 == 0,
        structured_replies: features & 4 == 0,
        extended_headers: features & 8 == 0,
        allow_meta_contexts: features & 16 == 0,
        // A few options only: the limit is reached by short inputs too.
        max_options: if features & 32 == 0 { 1024 } else { 8 },
        meta_contexts: META_CONTEXTS,
        ..HandshakeConfig::default()
    };
    let count = 1 + usize::from(other >> 3) % 3;
    let pool = other & 4 != 0;
    let mut exports = Vec::with_capacity(count);
    for i in 0..count {
        exports.push(export(input, i, pool)?);
    }
    let mut set = ExportSet::from_exports(exports);
    if other & 0x20 != 0 {
        set = set.serve_any_name();
    }
    let limits = Limits {
        // Small enough that a few pipelined READs reach it.
        connection: if other & 0x40 != 0 {
            1 << 20
        } else {
            super::BUDGET
        },
        // Small enough that the harness's exports (at most 192 KiB) see
        // zero-copy WRITEs too.
        stream_writes_from: if other & 0x80 != 0 {
            4096
        } else {
            crate::inflow::STREAM_MIN
        },
        ..Limits::default()
    };
    Some(Setup {
        cfg: ConnConfig {
            limits,
            exports: Arc::new(set),
            proto: ConnectionConfig {
                handshake,
                oldstyle,
                ..ConnectionConfig::default()
            },
            // The real credentials: STARTTLS starts a real rustls session
            // (which the fuzzer's bytes then feed as ciphertext).
            tls: (!other.is_multiple_of(3)).then(crate::tls::fuzzing::driver_config),
        },
        pool,
    })
}

/// Export `i` ("", "a", "b": the first is also the default), its policy
/// and its stack.
fn export(input: &mut Input<'_>, i: usize, pool: bool) -> Option<Export> {
    let p = input.u8();
    let description = match (p >> 3) % 4 {
        0 => None,
        1 => Some("fuzz export".to_owned()),
        // Longer than an NBD string may be, with a multi-byte character
        // across the 4096-byte limit: the driver must clip it on a
        // character boundary.
        2 => Some(format!("{}é{}", "d".repeat(4095), "e".repeat(100))),
        _ => Some(String::new()),
    };
    let policy = ExportPolicy {
        description,
        allow_resize: p & 1 != 0,
        tls_required: p & 2 != 0,
    };
    let mut backend = stack(input, 8)?;
    if pool {
        backend = Arc::new(Delay::new(backend, Duration::ZERO, Duration::ZERO)) as Arc<dyn Backend>;
    }
    let name = ["", "a", "b"][i].to_owned();
    let own = backend.description();
    Some(Export::new(name, own, backend).with_policy(&policy))
}
