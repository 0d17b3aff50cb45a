//! What a `--tls=on` (SELECTIVETLS) server tells anyone before TLS: option
//! replies in plaintext must not carry server-side paths. NBD_OPT_LIST and
//! NBD_INFO_DESCRIPTION are answered before STARTTLS in this mode
//! (nbd-protocol.md checklist 52 applies only to FORCEDTLS), so a `file`
//! export whose description was its absolute path told an unauthenticated
//! peer the server's directory layout. nbdkit and nbd-server send no
//! description for files.

mod common;
#[path = "common/tls.rs"]
mod tls;

use common::{Server, Transport};
use tls::{OPT_INFO, OPT_LIST, Pki, REP_ACK, REP_INFO, REP_SERVER, RawClient};

/// `NBD_INFO_DESCRIPTION`.
const INFO_DESCRIPTION: u16 = 2;

/// OPT_INFO data for export `name` asking for its description.
fn info_request(name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend((name.len() as u32).to_be_bytes());
    v.extend(name.as_bytes());
    v.extend(1u16.to_be_bytes());
    v.extend(INFO_DESCRIPTION.to_be_bytes());
    v
}

/// Every byte the server sent in plaintext for LIST and for INFO of each
/// listed export; fails if the options are not answered normally.
fn plaintext_answers(server: &Server) -> (Vec<String>, Vec<u8>) {
    let mut c = RawClient::connect(server);
    let mut seen = Vec::new();
    let mut names = Vec::new();
    let list = c.option(OPT_LIST, &[]);
    assert_eq!(list.last().map(|r| r.kind), Some(REP_ACK), "LIST: {list:?}");
    for r in &list {
        seen.extend(&r.data);
        if r.kind == REP_SERVER {
            let n = u32::from_be_bytes(r.data[..4].try_into().unwrap()) as usize;
            names.push(String::from_utf8(r.data[4..4 + n].to_vec()).unwrap());
        }
    }
    for name in &names {
        let info = c.option(OPT_INFO, &info_request(name));
        assert_eq!(
            info.last().map(|r| r.kind),
            Some(REP_ACK),
            "INFO {name}: {info:?}"
        );
        assert!(
            info.iter().any(|r| r.kind == REP_INFO),
            "INFO {name}: {info:?}"
        );
        for r in &info {
            seen.extend(&r.data);
        }
    }
    (names, seen)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// `file FILE` with an absolute path: LIST and INFO say nothing of it.
#[test]
fn file_export_path_is_not_sent_before_tls() {
    let pki = Pki::new();
    let data = common::TempDir::new("noleak-file");
    let disk = data.path().join("secret-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let certs = format!("--tls-certificates={}", pki.dir().display());
    let server = Server::start(
        Transport::Unix,
        &["--tls=on", &certs, "file", disk.to_str().unwrap()],
    );
    let (names, seen) = plaintext_answers(&server);
    assert_eq!(names.len(), 1, "{names:?}");
    for leak in [
        disk.to_str().unwrap(),
        data.path().to_str().unwrap(),
        "secret-disk",
    ] {
        assert!(
            !contains(&seen, leak),
            "plaintext LIST/INFO carries {leak:?}: {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
}

/// `file dir=DIR`: the export names are the file names (that is the
/// point of the mode), but no description carries DIR.
#[test]
fn dir_export_paths_are_not_sent_before_tls() {
    let pki = Pki::new();
    let data = common::TempDir::new("noleak-dir");
    let dir = data.path().join("private-images");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["a.img", "b.img"] {
        std::fs::write(dir.join(f), vec![0u8; 4096]).unwrap();
    }
    let certs = format!("--tls-certificates={}", pki.dir().display());
    let dir_arg = format!("dir={}", dir.display());
    let server = Server::start(Transport::Unix, &["--tls=on", &certs, "file", &dir_arg]);
    let (names, seen) = plaintext_answers(&server);
    assert_eq!(names, ["a.img", "b.img"]);
    assert!(
        !contains(&seen, "private-images"),
        "plaintext LIST/INFO carries the directory: {:?}",
        String::from_utf8_lossy(&seen)
    );
}
