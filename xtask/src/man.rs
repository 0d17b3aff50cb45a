//! `cargo xtask man`: the page is rendered by nbdd's own code (the option
//! table behind `--help`); its test rewrites docs/nbdd.1 when asked to, so
//! xtask needs no dependency on the driver.

use crate::util::{cargo, root, sh};

pub fn run(args: &[String]) -> Result<(), String> {
    let install = match args {
        [] => false,
        [a] if a == "--install" => true,
        _ => return Err(format!("man: unknown options {args:?}")),
    };
    sh(cargo()
        .args(["test", "-q", "-p", "nbd-mio-driver", "--test", "cli_man"])
        .env("NBDD_WRITE_MAN", "1"))?;
    let page = root().join("docs/nbdd.1");
    println!("wrote {}", page.display());
    if install {
        let dir = std::path::Path::new("/usr/local/share/man/man1");
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::copy(&page, dir.join("nbdd.1")).map_err(|e| format!("install: {e}"))?;
        println!("installed {}", dir.join("nbdd.1").display());
    }
    Ok(())
}
