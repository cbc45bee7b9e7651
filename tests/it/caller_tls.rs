//! Callers over TLS (shared-service mode): HTTP/1.1 and h2 by ALPN, a certificate rotated
//! without a restart, and client certificates in place of bearer tokens. A real rustls client
//! through sockets on 127.0.0.1.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::support::*;

const BODY: &str = r#"{"GroupId":"tls-group"}"#;

/// A CA made for one test.
struct Pki {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl Pki {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("ca key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("ca cert");
        Pki { key, cert }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate and key (PEM) this CA signed: a server one for 127.0.0.1, or a client one.
    fn issue(&self, client: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let names = if client {
            vec!["caller.example".to_string()]
        } else {
            vec!["127.0.0.1".to_string(), "localhost".to_string()]
        };
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

fn certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("pem")
}

fn client_config(
    trusted: &Pki,
    alpn: &[u8],
    client_cert: Option<&(String, String)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&trusted.pem()) {
        roots.add(cert).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let key = rustls_pemfile::private_key(&mut key.as_bytes())
                .expect("pem")
                .expect("key");
            builder
                .with_client_auth_cert(certs(cert), key)
                .expect("client cert")
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// One request over a fresh TLS connection, HTTP/2 or HTTP/1.1 as ALPN chose; `Err` with
/// why when the handshake or the exchange failed.
async fn tls_post(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    authorization: Option<&str>,
) -> Result<(Reply, Version), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut builder = Request::post(if h2 {
        format!("https://{addr}{GET}")
    } else {
        GET.to_string()
    })
    .header("content-type", "application/json");
    if !h2 {
        builder = builder.header("host", addr.to_string());
    }
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    let req = builder
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .expect("request");
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("h1: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        },
        parts.version,
    ))
}

/// Writes a file whole, the way a Secret update replaces it (write aside, then rename).
fn replace(path: &Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).expect("write");
    std::fs::rename(&aside, path).expect("rename");
}

fn tls_config(endpoint: &str, dir: &Path, client_ca: bool, sections: &str) -> String {
    let mut server = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    );
    if client_ca {
        server.push_str(&format!(
            "tls_client_ca_file = \"{}\"\n",
            dir.join("ca.crt").display()
        ));
    }
    config_text(endpoint, "", sections).replacen(
        "shutdown_grace = \"5s\"\n",
        &format!("shutdown_grace = \"5s\"\n{server}"),
        1,
    )
}

#[tokio::test]
async fn callers_over_tls_with_h2_and_http1_and_a_certificate_rotated_without_restart() {
    let emulator = spawn_emulator(None).await;
    let dir = tempfile::tempdir().expect("dir");
    let first = Pki::new("first CA");
    let (cert, key) = first.issue(false);
    std::fs::write(dir.path().join("tls.crt"), &cert).expect("write");
    std::fs::write(dir.path().join("tls.key"), &key).expect("write");
    let gw = spawn_gateway(&tls_config(&emulator.endpoint(), dir.path(), false, "")).await;

    let (reply, version) = tls_post(gw.addr, client_config(&first, b"h2", None), None)
        .await
        .expect("h2 over TLS");
    assert_eq!(version, Version::HTTP_2);
    assert_eq!((reply.status.as_u16(), reply.error_code()), (200, 0));
    let (reply, version) = tls_post(gw.addr, client_config(&first, b"http/1.1", None), None)
        .await
        .expect("HTTP/1.1 over TLS");
    assert_eq!(version, Version::HTTP_11);
    assert_eq!((reply.status.as_u16(), reply.error_code()), (200, 0));
    assert!(
        raw_exchange(
            gw.addr,
            format!("POST {GET} HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n\r\n{{}}").as_bytes(),
            Duration::from_secs(5),
        )
        .await
        .is_none(),
        "plain HTTP on the TLS listener gets no answer"
    );

    // Rotation: a certificate from another CA replaces the files; no restart.
    let second = Pki::new("second CA");
    let (cert, key) = second.issue(false);
    replace(&dir.path().join("tls.key"), &key);
    replace(&dir.path().join("tls.crt"), &cert);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        match tls_post(gw.addr, client_config(&second, b"h2", None), None).await {
            Ok((reply, _)) => {
                assert_eq!(reply.status, 200);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "the new certificate was never served: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old = tls_post(gw.addr, client_config(&first, b"h2", None), None).await;
    assert!(old.is_err(), "the old certificate is still served");
}

#[tokio::test]
async fn client_certificates_stand_in_for_bearer_tokens() {
    let emulator = spawn_emulator(None).await;
    let dir = tempfile::tempdir().expect("dir");
    let server_ca = Pki::new("server CA");
    let (cert, key) = server_ca.issue(false);
    std::fs::write(dir.path().join("tls.crt"), &cert).expect("write");
    std::fs::write(dir.path().join("tls.key"), &key).expect("write");
    let client_ca = Pki::new("client CA");
    std::fs::write(dir.path().join("ca.crt"), client_ca.pem()).expect("write");
    std::fs::write(dir.path().join("tokens"), "bearer-token\n").expect("write");
    let sections = format!(
        "[auth]\ntokens_file = \"{}\"\n",
        dir.path().join("tokens").display()
    );
    let gw = spawn_gateway(&tls_config(
        &emulator.endpoint(),
        dir.path(),
        true,
        &sections,
    ))
    .await;

    let caller = client_ca.issue(true);
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let (reply, _) = tls_post(
            gw.addr,
            client_config(&server_ca, alpn, Some(&caller)),
            None,
        )
        .await
        .expect("a caller with a certificate from the client CA");
        assert_eq!((reply.status.as_u16(), reply.error_code()), (200, 0));
    }
    let stranger = Pki::new("another CA").issue(true);
    for cert in [None, Some(&stranger)] {
        let refused = tls_post(
            gw.addr,
            client_config(&server_ca, b"h2", cert),
            Some("Bearer bearer-token"),
        )
        .await;
        assert!(
            refused.is_err(),
            "a caller without a certificate from the client CA got in"
        );
    }
    assert_eq!(emulator.emulator.requests(), 2);
}

/// A leaf certificate as the client CA would be taken as a root: the gateway refuses to start.
#[tokio::test]
async fn a_leaf_certificate_as_client_ca_stops_the_start() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new("server CA");
    let (cert, cert_key) = pki.issue(false);
    std::fs::write(dir.path().join("tls.crt"), &cert).expect("write");
    std::fs::write(dir.path().join("tls.key"), &cert_key).expect("write");
    // The server's own certificate, a leaf, where the client CA belongs.
    std::fs::write(dir.path().join("ca.crt"), &cert).expect("write");
    let text = tls_config("http://127.0.0.1:9", dir.path(), true, "");
    let config = chat_gateway::config::Config::parse(&text).expect("valid");
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listeners = |l: std::net::TcpListener| {
        l.set_nonblocking(true).expect("nonblocking");
        tokio::net::TcpListener::from_std(l).expect("listener")
    };
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        chat_gateway::run(
            config,
            key(),
            chat_gateway::Listeners {
                callers: listeners(bind()),
                admin: listeners(bind()),
            },
            std::future::pending(),
        ),
    )
    .await
    .expect("refused at once");
    let error = result.expect_err("a leaf is not a client CA").to_string();
    assert!(
        error.starts_with("server.tls_client_ca_file: certificate 1 of the file is not a CA"),
        "{error}"
    );
}

/// The TLS listener's first-request deadline covers the handshake: a caller that sends
/// nothing, or the start of a ClientHello and then nothing, is closed after about
/// `header_read_timeout` and gives its connection slot back.
#[tokio::test]
async fn silent_and_half_sent_client_hellos_are_closed_after_header_read_timeout() {
    let emulator = spawn_emulator(None).await;
    let dir = tempfile::tempdir().expect("dir");
    let ca = Pki::new("server CA");
    let (cert, key) = ca.issue(false);
    std::fs::write(dir.path().join("tls.crt"), &cert).expect("write");
    std::fs::write(dir.path().join("tls.key"), &key).expect("write");
    let config = tls_config(&emulator.endpoint(), dir.path(), false, "").replacen(
        "shutdown_grace = \"5s\"\n",
        "shutdown_grace = \"5s\"\nheader_read_timeout = \"300ms\"\n",
        1,
    );
    let gw = spawn_gateway(&config).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(gw.addr).await.expect("connect");
    let mut partial = TcpStream::connect(gw.addr).await.expect("connect");
    // A handshake record's header and the first bytes of a ClientHello (type, length,
    // version), then nothing more.
    tokio::io::AsyncWriteExt::write_all(
        &mut partial,
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
    )
    .await
    .expect("write");
    for (name, stream) in [
        ("silent", &mut silent),
        ("half-sent ClientHello", &mut partial),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "{name} TLS connection still open"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    let open = metric(&scrape(gw.admin).await, "chat_gateway_caller_connections");
    assert_eq!(open, 0.0, "connection slots given back");
    // The listener still serves a whole handshake.
    let (reply, _) = tls_post(gw.addr, client_config(&ca, b"h2", None), None)
        .await
        .expect("h2 over TLS");
    assert_eq!((reply.status.as_u16(), reply.error_code()), (200, 0));
}
