//! The sample systemd units in `contrib/` stay valid: `systemd-analyze
//! verify` accepts them with nbdd's real binary as `ExecStart`.

use std::path::Path;
use std::process::Command;

#[test]
fn systemd_units_verify() {
    let tool = "/usr/bin/systemd-analyze";
    assert!(
        Path::new(tool).exists(),
        "missing {tool}: apt-get install systemd"
    );
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib");
    let dir = std::env::temp_dir().join(format!("nbdd-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for unit in ["nbdd.socket", "nbdd.service"] {
        let text = std::fs::read_to_string(contrib.join(unit)).unwrap();
        assert!(unit != "nbdd.service" || text.contains("/usr/local/bin/nbdd"));
        let text = text.replace("/usr/local/bin/nbdd", env!("CARGO_BIN_EXE_nbdd"));
        std::fs::write(dir.join(unit), text).unwrap();
    }
    let out = Command::new(tool)
        .arg("verify")
        .arg(dir.join("nbdd.socket"))
        .arg(dir.join("nbdd.service"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.trim().is_empty(), "warnings: {err}");
}
