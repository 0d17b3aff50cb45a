//! Real GnuTLS peers (`gnutls-cli`) against a one-connection test server
//! that drives a [`TlsSession`] over a blocking loopback socket.

use super::*;

/// What the one-connection test server saw.
#[derive(Debug)]
struct Served {
    identity: Option<String>,
    received: Vec<u8>,
    peer_closed: bool,
}

/// Accept one connection on 127.0.0.1 and run it over a blocking socket
/// through the trait: greet with `hello <identity>\n`, echo every plaintext
/// byte upper-cased, stop at close_notify or EOF.
/// The third value receives the peer identity the moment the handshake
/// completes, even if the connection fails afterwards.
fn serve_once(
    config: TlsServerConfig,
) -> (
    u16,
    thread::JoinHandle<Result<Served, String>>,
    mpsc::Receiver<Option<String>>,
) {
    let (handshaken, handshake_rx) = mpsc::channel();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let sock = loop {
            match listener.accept() {
                Ok((sock, _)) => break sock,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && start.elapsed() < DEADLINE => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        sock.set_nonblocking(false).unwrap();
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut session = config.new_session().map_err(|e| e.to_string())?;
        serve(session.as_mut(), sock, handshaken)
    });
    (port, handle, handshake_rx)
}

fn serve(
    s: &mut dyn TlsSession,
    mut sock: TcpStream,
    handshaken: mpsc::Sender<Option<String>>,
) -> Result<Served, String> {
    let mut buf = vec![0u8; 16384];
    let mut plain = Vec::new();
    while s.is_handshaking() {
        flush(s, &mut sock)?;
        let n = sock.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("EOF during handshake".to_owned());
        }
        if let Err(e) = feed_all(s, &buf[..n], &mut plain) {
            let _ = flush(s, &mut sock); // the alert, best effort
            return Err(e.to_string());
        }
    }
    let identity = s.peer_identity();
    let _ = handshaken.send(identity.clone()); // a test may not listen
    let hello = format!("hello {}\n", identity.as_deref().unwrap_or("anonymous"));
    send_all(s, &mut sock, hello.as_bytes())?;
    let mut received = Vec::new();
    loop {
        if !plain.is_empty() {
            send_all(s, &mut sock, &plain.to_ascii_uppercase())?;
            received.append(&mut plain);
        }
        if s.peer_closed() {
            break;
        }
        let n = sock.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        feed_all(s, &buf[..n], &mut plain).map_err(|e| e.to_string())?;
    }
    let peer_closed = s.peer_closed();
    s.send_close_notify();
    let _ = flush(s, &mut sock); // the client may have gone already
    Ok(Served {
        identity,
        received,
        peer_closed,
    })
}

fn feed_all(s: &mut dyn TlsSession, mut data: &[u8], plain: &mut Vec<u8>) -> io::Result<()> {
    while !data.is_empty() {
        let n = s.feed_ciphertext(data)?;
        drain(s, plain)?;
        data = &data[n..];
    }
    drain(s, plain).map(|_| ())
}

fn send_all(s: &mut dyn TlsSession, sock: &mut TcpStream, mut data: &[u8]) -> Result<(), String> {
    while !data.is_empty() {
        let n = s.write_plaintext(data).map_err(|e| e.to_string())?;
        data = &data[n..];
        flush(s, sock)?;
    }
    Ok(())
}

fn flush(s: &mut dyn TlsSession, sock: &mut TcpStream) -> Result<(), String> {
    let mut buf = vec![0u8; 16384];
    while s.wants_write() {
        let n = s.take_ciphertext(&mut buf).map_err(|e| e.to_string())?;
        sock.write_all(&buf[..n])
            .map_err(|e| format!("write: {e}"))?;
    }
    Ok(())
}

/// A running `gnutls-cli` with its stdout collected by a thread.
struct GnutlsCli {
    child: Child,
    stdout: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl GnutlsCli {
    fn spawn(port: u16, args: &[&str]) -> Self {
        let mut child = Command::new("gnutls-cli")
            .args(args)
            .arg(format!("--port={port}"))
            .arg("127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gnutls-cli not found: apt-get install gnutls-bin");
        let mut out = child.stdout.take().unwrap();
        let (tx, stdout) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdout,
            seen: Vec::new(),
        }
    }

    /// Wait until stdout contains `needle`; false if the client exited or
    /// the deadline passed first.
    fn wait_for(&mut self, needle: &str) -> bool {
        let end = Instant::now() + DEADLINE;
        while !String::from_utf8_lossy(&self.seen).contains(needle) {
            let left = end.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(_) => return false,
            }
        }
        true
    }

    fn send(&mut self, line: &str) {
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
    }

    /// Close stdin (gnutls-cli then says goodbye) and wait for the exit.
    fn finish(mut self) -> (bool, String) {
        drop(self.child.stdin.take());
        let end = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > end {
                self.child.kill().unwrap();
                panic!("gnutls-cli did not exit");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.success(), err)
    }
}

/// A full successful session: greeting, one echoed line, goodbye.
fn gnutls_session_works(config: TlsServerConfig, args: &[&str], identity: &str) -> Served {
    let (port, server, _handshaken) = serve_once(config);
    let mut cli = GnutlsCli::spawn(port, args);
    let hello = format!("hello {identity}\n");
    let greeted = cli.wait_for(&hello);
    if greeted {
        cli.send("ping over tls\n");
        assert!(cli.wait_for("PING OVER TLS\n"), "no echo: {:?}", cli.seen);
    }
    let seen = String::from_utf8_lossy(&cli.seen).into_owned();
    let (ok, stderr) = cli.finish();
    if !greeted {
        let server = server.join();
        panic!("no {hello:?} in {seen:?}; stderr: {stderr}; server: {server:?}");
    }
    assert!(ok, "gnutls-cli failed: {stderr}");
    let served = server.join().unwrap().unwrap();
    assert_eq!(served.received, b"ping over tls\n");
    served
}

/// A refused session: gnutls-cli fails and the server's session returned Err.
fn gnutls_session_refused(config: TlsServerConfig, args: &[&str]) -> String {
    let (port, server, handshaken) = serve_once(config);
    let cli = GnutlsCli::spawn(port, args);
    let server_result = server.join().unwrap();
    let (ok, stderr) = cli.finish();
    assert!(
        !ok,
        "gnutls-cli succeeded against a refusing server: {stderr}"
    );
    assert!(handshaken.try_recv().is_err(), "the handshake completed");
    server_result.expect_err("server accepted the session")
}

fn ca_args() -> Vec<String> {
    vec![format!(
        "--x509cafile={}",
        pki().join("ca-cert.pem").display()
    )]
}

fn client_cert_args(prefix: &str) -> Vec<String> {
    let mut args = ca_args();
    args.push(format!(
        "--x509certfile={}",
        pki().join(format!("{prefix}-cert.pem")).display()
    ));
    args.push(format!(
        "--x509keyfile={}",
        pki().join(format!("{prefix}-key.pem")).display()
    ));
    args
}

fn psk_args(user: &str, key_hex: &str, priority: &str) -> Vec<String> {
    vec![
        format!("--priority={priority}"),
        format!("--pskusername={user}"),
        format!("--pskkey={key_hex}"),
    ]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

const PSK_PRIORITY: &str = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK";

#[test]
fn gnutls_x509_client_verifies_our_certificate() {
    let served = gnutls_session_works(x509_server(false), &strs(&ca_args()), "anonymous");
    assert!(served.peer_closed, "gnutls-cli ends with close_notify");
}

#[test]
fn gnutls_x509_client_certificate_from_the_ca_is_accepted() {
    let args = client_cert_args("client");
    let served = gnutls_session_works(x509_server(true), &strs(&args), "O=nbdd test, CN=alice");
    assert_eq!(served.identity.as_deref(), Some("O=nbdd test, CN=alice"));
}

#[test]
fn gnutls_x509_client_certificate_from_another_ca_is_refused() {
    let args = client_cert_args("rogue/client");
    let err = gnutls_session_refused(x509_server(true), &strs(&args));
    assert!(err.contains("TLS"), "{err}");
}

#[test]
fn gnutls_psk_tls13_works() {
    let args = psk_args("alice", &psk_hex(), PSK_PRIORITY);
    let served = gnutls_session_works(psk_server(), &strs(&args), "alice");
    assert_eq!(served.identity.as_deref(), Some("alice"));
}

/// gnutls-cli 3.7.9 (Debian 12) crashes with SIGSEGV right after a
/// successful TLS 1.2 PSK handshake, while printing the session (reproduced
/// against this server and by hand), so only the server's side is asserted
/// here: the handshake completed as alice, which needs the client's Finished
/// MAC to verify under the shared key and an ECDHE-PSK suite (the only TLS
/// 1.2 suites offered). Application data over TLS 1.2 PSK is covered by
/// `psk_openssl_client_tls12_gets_a_forward_secret_suite`.
#[test]
fn gnutls_psk_tls12_handshake_completes() {
    let priority = format!("{PSK_PRIORITY}:-VERS-TLS1.3");
    let args = psk_args("alice", &psk_hex(), &priority);
    let (port, server, handshaken) = serve_once(psk_server());
    let cli = GnutlsCli::spawn(port, &strs(&args));
    let identity = handshaken.recv_timeout(DEADLINE);
    let _ = cli.finish();
    let _ = server.join().unwrap();
    assert_eq!(identity, Ok(Some("alice".to_owned())));
}

#[test]
fn gnutls_psk_wrong_key_is_refused() {
    let args = psk_args("alice", &"5a".repeat(32), PSK_PRIORITY);
    let err = gnutls_session_refused(psk_server(), &strs(&args));
    assert!(err.contains("TLS-PSK handshake"), "{err}");
}

#[test]
fn gnutls_psk_unknown_user_is_refused() {
    let args = psk_args("mallory", &psk_hex(), PSK_PRIORITY);
    let err = gnutls_session_refused(psk_server(), &strs(&args));
    assert!(err.contains("TLS-PSK handshake"), "{err}");
}
