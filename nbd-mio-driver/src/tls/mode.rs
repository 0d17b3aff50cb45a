//! `--tls=off|on|require`: the server's TLS mode (nbd-protocol.md 3.11).

use std::str::FromStr;

/// The server's TLS policy, spelled as nbdkit spells `--tls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// NOTLS: STARTTLS is refused, never `NBD_REP_ERR_TLS_REQD`.
    Off,
    /// SELECTIVETLS: clients may upgrade with STARTTLS but need not.
    On,
    /// FORCEDTLS: every option except STARTTLS and ABORT gets
    /// `NBD_REP_ERR_TLS_REQD` until TLS is up.
    Require,
}

impl FromStr for TlsMode {
    type Err = String;

    /// Accepts what nbdkit accepts, case-insensitively: `require`,
    /// `required` and `force` for [`TlsMode::Require`]; its boolean words
    /// (`on`/`yes`/`y`/`true`/`t`/`1` and `off`/`no`/`n`/`false`/`f`/`0`)
    /// for [`TlsMode::On`] and [`TlsMode::Off`]. Scripts written for nbdkit
    /// therefore work unchanged.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "require" | "required" | "force" => Ok(Self::Require),
            "on" | "yes" | "y" | "true" | "t" | "1" => Ok(Self::On),
            "off" | "no" | "n" | "false" | "f" | "0" => Ok(Self::Off),
            _ => Err(format!(
                "--tls: unknown mode {s:?} (expected off, on or require)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbdkit_spellings_parse() {
        let table = [
            ("off", TlsMode::Off),
            ("no", TlsMode::Off),
            ("FALSE", TlsMode::Off),
            ("0", TlsMode::Off),
            ("on", TlsMode::On),
            ("Yes", TlsMode::On),
            ("true", TlsMode::On),
            ("1", TlsMode::On),
            ("require", TlsMode::Require),
            ("REQUIRED", TlsMode::Require),
            ("force", TlsMode::Require),
        ];
        for (text, mode) in table {
            assert_eq!(text.parse::<TlsMode>(), Ok(mode), "{text}");
        }
    }

    #[test]
    fn unknown_words_are_rejected_with_the_word() {
        for bad in ["", "maybe", "requires", "on ", "2"] {
            let err = bad.parse::<TlsMode>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
