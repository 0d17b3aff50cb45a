//! `data`: a disk written from the command line (nbdkit's data plugin).
//!
//! `data=EXPR` in the data format ([`parse`] has the grammar, [`eval`] the
//! meaning), `raw=BYTES` or `base64=BASE64`; `size=` truncates or extends.
//! The result is loaded into a sparse [`MemoryBackend`], so the disk is
//! writable (writes are lost at exit) and unwritten ranges are holes.

mod eval;
mod image;
mod parse;

use crate::registry::Params;
use crate::{Backend, MemoryBackend};

use image::Image;

/// Build the data backend from its parameters. Parameters nobody else
/// took are `$VAR` variables (nbdkit's rule), allowed only with `data=`.
pub(crate) fn build(p: &mut Params<'_>) -> Result<MemoryBackend, String> {
    let size = p.take_size("data", "size")?;
    let sources = [p.take("data"), p.take("raw"), p.take("base64")];
    let vars = p.take_rest();
    let no_vars = || match vars.first() {
        Some((k, _)) => Err(format!(
            "unknown parameter '{k}' for backend data ($VAR variables need data=)"
        )),
        None => Ok(()),
    };
    let img = match sources {
        [Some(expr), None, None] => eval::Eval::new(&vars)
            .run(expr)
            .map_err(|e| format!("data: {e}"))?,
        [None, Some(raw), None] => {
            no_vars()?;
            Image::from_bytes(raw.as_bytes())
        }
        [None, None, Some(b)] => {
            no_vars()?;
            Image::from_bytes(&base64(b).map_err(|e| format!("data: base64: {e}"))?)
        }
        [None, None, None] => {
            return Err("data: give one of data=, raw= or base64= (e.g. data '0x55 0xAA')".into());
        }
        _ => return Err("data: give only one of data=, raw= or base64=".into()),
    };
    load(&img, size)
}

/// The image in a memory disk of `size` bytes (default: the image's).
fn load(img: &Image, size: Option<u64>) -> Result<MemoryBackend, String> {
    let size = size.unwrap_or(img.len);
    let disk = MemoryBackend::new(size).map_err(|e| format!("data: {e}"))?;
    for (idx, page) in img.pages() {
        let at = idx * image::PAGE;
        if at >= size {
            break;
        }
        let n = (size - at).min(image::PAGE).min(img.len - at) as usize;
        disk.write_at(at, &page[..n], false)
            .map_err(|e| format!("data: {e}"))?;
    }
    Ok(disk)
}

/// Standard base64 (RFC 4648, `+/`, `=` padding); whitespace is skipped.
fn base64(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let body = digits
        .strip_suffix(b"==")
        .or_else(|| digits.strip_suffix(b"="))
        .unwrap_or(&digits);
    let pad = digits.len() - body.len();
    if !(body.len() + pad).is_multiple_of(4) || (pad > 0 && body.len() % 4 < 2) {
        return Err("length is not a multiple of 4 (with = padding)".into());
    }
    let value = |c: u8| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("'{}' is not a base64 character", c as char)),
        }
        .into())
    };
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = acc << 6 | value(c)?;
        }
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(b: &MemoryBackend) -> Vec<u8> {
        let mut v = vec![0u8; b.size() as usize];
        b.read_at(0, &mut v).unwrap();
        v
    }

    #[test]
    fn base64_decodes_and_checks() {
        assert_eq!(
            base64("aGVsbG8gbmJka2l0IHVzZXI=").unwrap(),
            b"hello nbdkit user"
        );
        assert_eq!(base64("QU JD").unwrap(), b"ABC");
        assert_eq!(base64("QQ==").unwrap(), b"A");
        assert_eq!(base64("QUI=").unwrap(), b"AB");
        assert_eq!(base64("").unwrap(), b"");
        for bad in ["QUJ", "Q===", "QU!D", "Q"] {
            assert!(base64(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn size_truncates_or_extends() {
        let img = Image::from_bytes(b"hello");
        assert_eq!(read_all(&load(&img, Some(3)).unwrap()), b"hel");
        assert_eq!(read_all(&load(&img, Some(7)).unwrap()), b"hello\0\0");
        assert_eq!(read_all(&load(&img, None).unwrap()), b"hello");
    }
}
