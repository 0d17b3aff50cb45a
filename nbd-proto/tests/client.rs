//! Client negotiation against scripted server bytes: oldstyle, non-fixed
//! newstyle, GO fallback to EXPORT_NAME, STARTTLS, refusals.

mod common;

use common::*;
use nbd_proto::client::{ClientConfig, ClientEvent, ClientHandshake};
use nbd_proto::{HeaderMode, OptReplyType, OptionCode, ProtocolError};

/// Run the client against `server` bytes; returns what it sent.
fn run(c: &mut ClientHandshake<'_>, server: &[u8]) -> (Vec<u8>, Vec<String>) {
    let mut sent = Vec::new();
    let mut events = Vec::new();
    let mut pos = 0;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = c.poll_transmit(&mut buf).unwrap();
        sent.extend_from_slice(&buf[..n]);
        let (m, ev) = c.handle_input(&server[pos..]).unwrap();
        pos += m;
        if let Some(ev) = ev {
            events.push(format!("{ev:?}"));
        }
        if n == 0 && m == 0 {
            break;
        }
    }
    assert_eq!(pos, server.len(), "client left server bytes unread");
    (sent, events)
}

#[test]
fn oldstyle_greeting_is_ready_at_once() {
    let mut g = NBDMAGIC.to_vec();
    g.extend_from_slice(&[0, 0, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53]);
    g.extend_from_slice(&4096u64.to_be_bytes());
    g.extend_from_slice(&5u32.to_be_bytes());
    g.extend_from_slice(&[0; 124]);
    let mut c = ClientHandshake::new(ClientConfig::default());
    let (sent, _) = run(&mut c, &g);
    assert!(sent.is_empty());
    let n = c.negotiated().unwrap();
    assert!(n.oldstyle);
    assert_eq!((n.size, n.flags.bits()), (4096, 5));
}

#[test]
fn non_fixed_server_gets_export_name_directly() {
    let mut server = greeting(0);
    server.extend_from_slice(&4096u64.to_be_bytes());
    server.extend_from_slice(&1u16.to_be_bytes());
    server.extend_from_slice(&[0; 124]);
    let mut c = ClientHandshake::new(ClientConfig {
        export: "disk",
        ..ClientConfig::default()
    });
    let (sent, _) = run(&mut c, &server);
    assert_eq!(sent, cat(&[0u32.to_be_bytes().to_vec(), opt(1, b"disk")]));
    assert_eq!(c.negotiated().unwrap().mode, HeaderMode::Simple);
}

#[test]
fn go_unsupported_falls_back_to_export_name() {
    let server = cat(&[
        greeting(3),
        rep(8, ACK, b""),
        rep(7, ERR_UNSUP, b"old server"),
        4096u64.to_be_bytes().to_vec(),
        1u16.to_be_bytes().to_vec(),
    ]);
    let mut c = ClientHandshake::new(ClientConfig {
        export: "x",
        ..ClientConfig::default()
    });
    let (sent, events) = run(&mut c, &server);
    assert_eq!(
        sent,
        cat(&[
            3u32.to_be_bytes().to_vec(),
            opt(8, b""),
            opt(7, &info_data("x", &[1, 2, 3])),
            opt(1, b"x"),
        ])
    );
    assert!(events[0].contains("Refused"), "{events:?}");
    let n = c.negotiated().unwrap();
    assert_eq!((n.size, n.mode), (4096, HeaderMode::Structured));
}

#[test]
fn extended_refused_falls_back_to_structured() {
    let server = cat(&[
        greeting(1),
        rep(11, ERR_UNSUP, b""),
        rep(8, ACK, b""),
        info_export(7, 512, 1),
        rep(7, ACK, b""),
    ]);
    let mut c = ClientHandshake::new(ClientConfig {
        extended_headers: true,
        ..ClientConfig::default()
    });
    let (sent, _) = run(&mut c, &server);
    // NO_ZEROES was not offered, so only FIXED_NEWSTYLE is set.
    assert_eq!(&sent[..4], &1u32.to_be_bytes());
    assert_eq!(c.negotiated().unwrap().mode, HeaderMode::Structured);
}

#[test]
fn starttls_is_an_event_then_options_restart() {
    let mut c = ClientHandshake::new(ClientConfig {
        tls: true,
        ..ClientConfig::default()
    });
    let pre = cat(&[greeting(3), rep(5, ACK, b"")]);
    let (sent, events) = run(&mut c, &pre);
    assert_eq!(sent, cat(&[3u32.to_be_bytes().to_vec(), opt(5, b"")]));
    assert_eq!(events, ["StartTls"]);
    assert!(!c.wants_read() && !c.wants_write());
    c.handle_tls_established();
    let post = cat(&[rep(8, ACK, b""), info_export(7, 1, 1), rep(7, ACK, b"")]);
    let (sent, _) = run(&mut c, &post);
    assert_eq!(
        sent,
        cat(&[opt(8, b""), opt(7, &info_data("", &[1, 2, 3]))])
    );
    assert!(c.negotiated().unwrap().tls);
}

#[test]
fn starttls_refused_is_fatal() {
    let mut c = ClientHandshake::new(ClientConfig {
        tls: true,
        ..ClientConfig::default()
    });
    let mut buf = [0u8; 64];
    c.handle_input(&greeting(3)).unwrap();
    let _ = c.poll_transmit(&mut buf).unwrap();
    let _ = c.poll_transmit(&mut buf).unwrap();
    let err = c.handle_input(&rep(5, ERR_POLICY, b"")).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::OptionRefused(OptionCode::StartTls, OptReplyType::ErrPolicy)
    );
}

#[test]
fn reply_for_wrong_option_is_a_violation() {
    let mut c = ClientHandshake::new(ClientConfig::default());
    let mut buf = [0u8; 64];
    c.handle_input(&greeting(3)).unwrap();
    let _ = c.poll_transmit(&mut buf).unwrap();
    let _ = c.poll_transmit(&mut buf).unwrap();
    assert!(matches!(
        c.handle_input(&rep(3, ACK, b"")),
        Err(ProtocolError::Violation(_))
    ));
}

#[test]
fn go_without_export_info_is_a_violation() {
    let server = cat(&[greeting(3), rep(8, ACK, b""), rep(7, ACK, b"")]);
    let mut c = ClientHandshake::new(ClientConfig::default());
    let mut buf = [0u8; 64];
    let mut pos = 0;
    let err = loop {
        let _ = c.poll_transmit(&mut buf).unwrap();
        match c.handle_input(&server[pos..]) {
            Ok((n, ev)) => {
                assert!(n > 0 || ev.is_some() || c.wants_write());
                pos += n;
                let _ = matches!(ev, Some(ClientEvent::Ready(_)));
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(err, ProtocolError::Violation(_)));
}
