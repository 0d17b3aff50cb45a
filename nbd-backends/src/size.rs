//! Human-readable sizes on the command line (`memory 1G`, `offset=4k`).

/// Largest size accepted: `i64::MAX`. NBD carries sizes as u64, but qemu,
/// the Linux nbd driver and nbdkit all treat them as signed 64-bit values,
/// so anything larger would be refused (or misread) by real clients.
pub const MAX_SIZE: u64 = i64::MAX as u64;

/// Parse a size such as `512`, `4k`, `1M`, `2GiB` or `1TB`.
///
/// A decimal number of bytes, optionally followed by a unit. Units are
/// case-insensitive and every one is a power of 1024, as in nbdkit:
/// `b` (bytes), `k`, `m`, `g`, `t`, `p`, `e`, each optionally followed by
/// `b` or `ib` (`4k` = `4K` = `4KB` = `4KiB` = 4096), and nbdkit's `s`
/// for 512-byte sectors (`4s` = 2048; nbdkit's parser has it since 1.0,
/// whatever the device's real sector size).
///
/// # Errors
///
/// A message naming the bad string when it is empty, not a number, has an
/// unknown unit, or exceeds [`MAX_SIZE`] (overflow included).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid size '{s}': {why}");
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(bad("expected a number of bytes, e.g. 512, 4k or 1G"));
    }
    let number: u64 = digits.parse().map_err(|_| bad("number too large"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "s" => 9,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => return Err(bad("unknown unit (use b, s, k, M, G, T, P or E)")),
    };
    let bytes = number
        .checked_mul(1u64 << shift)
        .filter(|&b| b <= MAX_SIZE)
        .ok_or_else(|| bad("larger than 2^63-1 bytes"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_and_units() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("512", 512),
            ("512b", 512),
            ("512B", 512),
            ("4s", 2048),
            ("1S", 512),
            ("0s", 0),
            ("4k", 4096),
            ("4K", 4096),
            ("4KB", 4096),
            ("4KiB", 4096),
            ("4kib", 4096),
            ("1M", 1 << 20),
            ("1MiB", 1 << 20),
            ("2G", 2 << 30),
            ("2gb", 2 << 30),
            ("1T", 1 << 40),
            ("1TiB", 1 << 40),
            ("1P", 1 << 50),
            ("1E", 1 << 60),
            ("7E", 7 << 60),
            ("9223372036854775807", i64::MAX as u64),
        ];
        for &(s, want) in cases {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn errors_name_the_string() {
        for s in [
            "",
            "abc",
            "k",
            "-1",
            "1.5G",
            " 1G",
            "1G ",
            "1X",
            "1KiBB",
            "1sb",
            "18014398509481984s",
            "8E",
            "9223372036854775808",
            "99999999999999999999999",
            "16E",
        ] {
            let err = parse_size(s).expect_err(s);
            assert!(err.contains(&format!("'{s}'")), "{err}");
        }
    }
}
