//! Helpers for e2e_filters: clients and captive runs.

use std::process::Command;

use crate::common::{self, Server, json, python_nbd, require_tool, run_ok};

/// A client tool, failing with the Debian package to install if absent.
pub fn tool(name: &str) -> Command {
    let package = match name {
        "qemu-io" | "qemu-img" => "qemu-utils",
        _ => "libnbd-bin",
    };
    Command::new(require_tool(name, package))
}

/// `nbdinfo --json`'s first export.
pub fn info(uri: &str) -> json::Value {
    let doc = json::parse(&run_ok(tool("nbdinfo").arg("--json").arg(uri)));
    doc.get("exports").arr()[0].clone()
}

/// Python with `h` connected to `uri` (and `nbd`, `errno` imported).
pub fn nbdsh(uri: &str, code: &str) -> String {
    let script = format!("import nbd, errno, sys\nh = nbd.NBD()\nh.connect_uri({uri:?})\n{code}\n");
    run_ok(python_nbd().args(["-c", &script]))
}

/// `qemu-io -c CMD...` on the server's export; its output. A first
/// command `-r` opens the export read-only.
pub fn qemu_io(srv: &Server, cmds: &[&str]) -> String {
    let mut c = tool("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        if *cmd == "-r" {
            c.arg("-r");
        } else {
            c.args(["-c", cmd]);
        }
    }
    run_ok(c.arg(srv.uri()))
}

/// The server in captive mode (`-U - ARGS --run SCRIPT`), as nbdkit's
/// manual pages do: it stops gracefully when SCRIPT exits.
pub fn captive(args: &[&str], script: &str) -> String {
    let (program, _) = common::server_program();
    run_ok(
        Command::new(program)
            .args(["-U", "-"])
            .args(args)
            .args(["--run", script]),
    )
}
