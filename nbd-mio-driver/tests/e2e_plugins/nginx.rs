//! A private nginx for the curl tests: plain HTTP and HTTPS (a fresh
//! self-signed certificate for `localhost`) on free loopback ports, its
//! own configuration, logs and document root in the test's directory.
//! Locations that need a header, a cookie or basic authentication stand
//! in for the servers people point the curl plugin at; `/slow/` serves the
//! same files at 4 MiB/s per request (a copy that lasts long enough to
//! kill the server in its middle). One process
//! (`master_process off`), so killing it on drop leaves no worker behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, require_tool, run_ok};

pub struct Nginx {
    child: Child,
    dir: PathBuf,
    pub port: u16,
    pub tls_port: u16,
    /// The CA that signed the server's certificate (PEM), for `cainfo=`.
    #[allow(dead_code)]
    pub cert: PathBuf,
}

impl Nginx {
    pub fn start(parent: &Path) -> Self {
        require_tool("nginx", "nginx-light");
        let openssl = require_tool("openssl", "openssl");
        let dir = parent.join("nginx");
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        // A CA and a leaf certificate for localhost signed by it: webpki
        // (rustls) refuses a self-signed certificate used as a leaf.
        let p = |n: &str| dir.join(n).display().to_string();
        let ssl = |args: &[&str]| run_ok(Command::new(&openssl).args(args));
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=nbdd test CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
        ]);
        ssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &p("key.pem"),
            "-out",
            &p("req.csr"),
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        ssl(&[
            "x509",
            "-req",
            "-in",
            &p("req.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &p("ext.cnf"),
            "-out",
            &p("cert.pem"),
        ]);
        let cert = dir.join("ca.pem");
        std::fs::write(dir.join("htpasswd"), "alice:{PLAIN}wonderland\n").unwrap();
        let (port, tls_port) = (free_port(), free_port());
        let d = dir.display();
        let conf = format!(
            "user root;\nmaster_process off;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
               fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
               server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n\
                 location /private/ {{ if ($http_x_token != \"secret\") {{ return 403; }} }}\n\
                 location /cookie/ {{ if ($cookie_session != \"abc\") {{ return 403; }} }}\n\
                 location /auth/ {{ auth_basic \"nbdd\"; auth_basic_user_file {d}/htpasswd; }}\n\
                 location /slow/ {{ alias {d}/www/; limit_rate 4m; }}\n  }}\n\
               server {{\n    listen 127.0.0.1:{tls_port} ssl;\n    ssl_certificate {d}/cert.pem;\n\
                 ssl_certificate_key {d}/key.pem;\n    root {d}/www;\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Self::spawn(&dir);
        let mut n = Self {
            child,
            dir,
            port,
            tls_port,
            cert,
        };
        n.wait_ready();
        n
    }

    fn spawn(dir: &Path) -> Child {
        Command::new(require_tool("nginx", "nginx-light"))
            .args([
                "-p",
                &dir.display().to_string(),
                "-c",
                &dir.join("nginx.conf").display().to_string(),
            ])
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx")
    }

    /// Kill the server (connections drop, nothing listens), as a network
    /// outage would.
    #[allow(dead_code)]
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same ports, with the same files.
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.dir);
        self.wait_ready();
    }

    /// Requests answered so far (lines of the access log, which nginx
    /// appends to across restarts).
    #[allow(dead_code)]
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(self.dir.join("access.log")).map_or(0, |l| l.lines().count())
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("www")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
                panic!("nginx exited ({st}); error.log:\n{log}");
            }
            let up = |p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
            if up(self.port) && up(self.tls_port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
