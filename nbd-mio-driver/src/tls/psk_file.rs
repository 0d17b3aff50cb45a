//! psktool's key file: one `username:hexkey` per line.
//!
//! This is the format GnuTLS's `psktool -u alice -p keys.psk` writes and that
//! nbdkit (`--tls-psk`), qemu (`<dir>/keys.psk`) and libnbd (`tls-psk-file`)
//! read, so one file serves both ends.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// The most key bytes OpenSSL's PSK callback can return (its
/// `PSK_MAX_PSK_LEN` is 512); psktool's default is 32.
pub const MAX_KEY_LEN: usize = 512;

/// Usernames mapped to their raw (hex-decoded) keys.
#[derive(Default)]
pub struct PskKeys {
    keys: HashMap<String, Vec<u8>>,
}

impl PskKeys {
    /// Read and parse `path`. Errors are one line: `FILE:LINE: problem`.
    /// A file that group or others may access is still used (refusing it
    /// would break working setups) but warned about in one line, as ssh
    /// does for private keys: anyone who can read it can be any user.
    pub fn load(path: &Path) -> Result<Self, String> {
        let io_err = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut file = File::open(path).map_err(io_err)?;
        // The mode of the file actually read (fstat), not of the name.
        let mode = file.metadata().map_err(io_err)?.permissions().mode();
        if let Some(warning) = permission_warning(path, mode) {
            log::warn!("{warning}");
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io_err)?;
        Self::parse(&text).map_err(|e| format!("{}:{e}", path.display()))
    }

    /// Parse the file's text. Blank lines and `#` comments are skipped; a
    /// malformed line, a duplicate user or an empty file is an error
    /// `LINE: problem` (a half-read key file would silently lock users out).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim_end_matches('\r').trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hex)) = line.split_once(':') else {
                return Err(format!("{line_no}: expected username:hexkey"));
            };
            if user.is_empty() {
                return Err(format!("{line_no}: empty username"));
            }
            let key = decode_hex(hex).map_err(|e| format!("{line_no}: user {user:?}: {e}"))?;
            if keys.insert(user.to_owned(), key).is_some() {
                return Err(format!("{line_no}: user {user:?} appears twice"));
            }
        }
        if keys.is_empty() {
            return Err(" no username:hexkey lines".to_owned());
        }
        Ok(Self { keys })
    }

    /// The raw key for `user`, if known.
    pub fn get(&self, user: &str) -> Option<&[u8]> {
        self.keys.get(user).map(Vec::as_slice)
    }

    /// How many users the file holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no user is known (never after a successful parse).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The one-line warning for a key file whose `mode` lets group or others
/// read or write it, or `None` when only the owner can.
fn permission_warning(path: &Path, mode: u32) -> Option<String> {
    let open = mode & 0o077;
    if open == 0 {
        return None;
    }
    let who = match (open & 0o070 != 0, open & 0o007 != 0) {
        (true, true) => "group and others",
        (true, false) => "group",
        _ => "others",
    };
    Some(format!(
        "{}: permissions {:04o} are too open: {who} can access the PSK keys (chmod 600 it)",
        path.display(),
        mode & 0o7777
    ))
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if hex.is_empty() {
        return Err("empty key".to_owned());
    }
    if !hex.len().is_multiple_of(2) {
        return Err("key has an odd number of hex digits".to_owned());
    }
    if hex.len() / 2 > MAX_KEY_LEN {
        return Err(format!("key longer than {MAX_KEY_LEN} bytes"));
    }
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => Ok((hi * 16 + lo) as u8),
                _ => Err("key is not hexadecimal".to_owned()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psktool_lines_decode() {
        let keys = PskKeys::parse(
            "alice:00ff10Ab\r\n\n# a comment\nbob:0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get("alice"), Some(&[0x00, 0xff, 0x10, 0xab][..]));
        assert_eq!(keys.get("bob").map(<[u8]>::len), Some(16));
        assert_eq!(keys.get("carol"), None);
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let cases = [
            ("alice:00\nbob\n", "2: expected username:hexkey"),
            ("alice:0g\n", "1: user \"alice\": key is not hexadecimal"),
            (
                "\n\nalice:abc\n",
                "3: user \"alice\": key has an odd number",
            ),
            ("alice:\n", "1: user \"alice\": empty key"),
            (":00\n", "1: empty username"),
            ("a:00\na:11\n", "2: user \"a\" appears twice"),
            ("# only a comment\n", "no username:hexkey lines"),
        ];
        for (text, expected) in cases {
            let err = PskKeys::parse(text).err().unwrap();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn oversized_keys_are_rejected() {
        let line = format!("alice:{}\n", "00".repeat(MAX_KEY_LEN + 1));
        let err = PskKeys::parse(&line).err().unwrap();
        assert!(err.contains("longer than 512"), "{err}");
        let line = format!("alice:{}\n", "00".repeat(MAX_KEY_LEN));
        assert_eq!(
            PskKeys::parse(&line).unwrap().get("alice").unwrap().len(),
            512
        );
    }

    #[test]
    fn only_owner_only_modes_pass_silently() {
        let p = Path::new("/etc/nbdd/keys.psk");
        for mode in [0o600, 0o400, 0o100600, 0o700] {
            assert_eq!(permission_warning(p, mode), None, "{mode:o}");
        }
        let w = permission_warning(p, 0o100644).unwrap();
        assert_eq!(
            w,
            "/etc/nbdd/keys.psk: permissions 0644 are too open: group and others can access the PSK keys (chmod 600 it)"
        );
        assert!(
            permission_warning(p, 0o640)
                .unwrap()
                .contains(": group can")
        );
        assert!(
            permission_warning(p, 0o602)
                .unwrap()
                .contains(": others can")
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let missing = Path::new("/nonexistent/nbdd/keys.psk");
        let err = PskKeys::load(missing).err().unwrap();
        assert!(err.starts_with("/nonexistent/nbdd/keys.psk: "), "{err}");
    }
}
