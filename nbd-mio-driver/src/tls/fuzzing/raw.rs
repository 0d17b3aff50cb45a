//! A hostile peer: the fuzzer's bytes are the ciphertext.

use nbd_backends::fuzzing::Input;

use super::MAX_FED;
use crate::tls::{SESSION_BUFFER_LIMIT, TlsSession};

/// A session and what the harness has seen of it.
struct Raw {
    s: Box<dyn TlsSession>,
    failed: bool,
    fed: usize,
    plaintext_out: usize,
    /// Where plaintext is read to, made once per run: zeroing a fresh
    /// 4 KiB array after every feed (thousands per run when a chunk is
    /// repeated) was 5 % of the target's time.
    plain: Vec<u8>,
}

pub fn run(session: impl TlsSession + 'static, input: &mut Input<'_>) {
    let mut r = Raw {
        s: Box::new(session),
        failed: false,
        fed: 0,
        plaintext_out: 0,
        plain: vec![0; 4096],
    };
    while !input.is_empty() && r.fed < MAX_FED {
        match input.u8() % 6 {
            0 => {
                let n = usize::from(input.u16() % 2048);
                let chunk = input.bytes(n);
                r.feed(chunk);
            }
            1 => {
                let n = usize::from(input.u8());
                let chunk = input.bytes(n).to_vec();
                for _ in 0..input.u16() {
                    if r.fed >= MAX_FED || !r.feed(&chunk) {
                        break;
                    }
                }
            }
            2 => r.drain_plaintext(),
            3 => {
                let data = vec![0x5a; usize::from(input.u16())];
                if let Ok(n) = r.s.write_plaintext(&data) {
                    assert!(
                        n <= data.len(),
                        "write_plaintext took {n} of {}",
                        data.len()
                    );
                }
            }
            4 => r.drain_ciphertext(usize::from(input.u16() % 16384) + 1),
            _ => r.s.send_close_notify(),
        }
        let _ = (r.s.is_handshaking(), r.s.peer_closed(), r.s.peer_identity());
    }
    r.drain_ciphertext(16384);
}

impl Raw {
    /// Feed `chunk` as the event loop does (short feeds, drain, retry);
    /// false when the session refused it (error or no progress).
    fn feed(&mut self, chunk: &[u8]) -> bool {
        let mut rest = chunk;
        while !rest.is_empty() {
            match self.s.feed_ciphertext(rest) {
                Ok(n) => {
                    assert!(n <= rest.len(), "fed {} but {n} consumed", rest.len());
                    assert!(!self.failed, "a failed session accepted bytes again");
                    self.fed += n;
                    rest = &rest[n..];
                    let before = self.plaintext_out;
                    self.drain_plaintext();
                    if n == 0 && self.plaintext_out == before {
                        // Full and nothing to read: the loop would wait
                        // for writability; so does the harness.
                        self.drain_ciphertext(SESSION_BUFFER_LIMIT);
                        return false;
                    }
                }
                Err(_) => {
                    self.failed = true;
                    return false;
                }
            }
        }
        true
    }

    fn drain_plaintext(&mut self) {
        loop {
            match self.s.read_plaintext(&mut self.plain) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    assert!(n <= self.plain.len());
                    self.plaintext_out += n;
                    assert!(
                        self.plaintext_out <= self.fed,
                        "{} bytes of plaintext from {} of ciphertext",
                        self.plaintext_out,
                        self.fed
                    );
                }
            }
        }
    }

    /// Take ciphertext until none is left; then the session must not
    /// claim to want to write.
    fn drain_ciphertext(&mut self, room: usize) {
        let mut buf = vec![0u8; room];
        let mut rounds = 0;
        loop {
            match self.s.take_ciphertext(&mut buf) {
                Ok(0) => break,
                Ok(n) => assert!(n <= buf.len(), "took {n} into {}", buf.len()),
                Err(_) => return,
            }
            rounds += 1;
            // Output comes from bounded buffers: it ends.
            assert!(rounds < 1 << 16, "take_ciphertext never runs dry");
        }
        assert!(!self.s.wants_write(), "wants_write after a full drain");
    }
}
