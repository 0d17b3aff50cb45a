//! Opening a `file` export as a user expects from nbdkit: a file that
//! cannot be opened for writing (permissions, an immutable file, a
//! read-only filesystem) is served read-only with one warning instead of
//! failing, and a directory gets a hint towards `dir=`.

use std::io;
use std::path::Path;

use super::FileBackend;

/// Errors after which opening read-only may still work.
fn write_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    )
}

/// [`FileBackend::open`], falling back to read-only (with a warning in the
/// log) when writing is refused.
///
/// # Errors
///
/// Those of opening the file; a directory is `InvalidInput` with a hint.
pub fn open_or_read_only(
    path: impl AsRef<Path>,
    readonly: bool,
    cache_none: bool,
) -> io::Result<FileBackend> {
    let path = path.as_ref();
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "is a directory (to serve each file in it, use dir={})",
                path.display()
            ),
        ));
    }
    match FileBackend::open(path, readonly, cache_none) {
        Err(e) if !readonly && write_refused(&e) => {
            let b = FileBackend::open(path, true, cache_none)?;
            log::warn!(
                "file: {}: cannot open for writing ({}); serving it read-only",
                path.display(),
                crate::plain_error(&e)
            );
            Ok(b)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Caps};

    #[test]
    fn directory_suggests_dir() {
        let e = open_or_read_only(std::env::temp_dir(), false, false)
            .err()
            .unwrap();
        assert!(e.to_string().contains("use dir="), "{e}");
    }

    /// Only refusals of writing fall back: a missing file stays an error.
    /// (The fallback itself is tested end to end with an immutable file:
    /// docs/NBDKIT-COMPAT.md's Behaviour rows, run by the driver's
    /// tests/cli_compat.rs.)
    #[test]
    fn missing_file_is_an_error() {
        let e = open_or_read_only("/nonexistent/nbdd-x", false, false)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn read_only_request_is_honoured() {
        let p = std::env::temp_dir().join(format!("nbdd-fallback-{}", std::process::id()));
        std::fs::write(&p, [0u8; 512]).unwrap();
        let b = open_or_read_only(&p, true, false).unwrap();
        let _ = std::fs::remove_file(&p);
        assert!(b.caps().contains(Caps::READ_ONLY));
    }
}
