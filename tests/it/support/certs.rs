//! Test certificates: a CA made for one test, the server certificate it signs, and a client
//! certificate it signs (for servers that ask for one).

use std::path::PathBuf;
use std::sync::Arc;

use chat_gateway::emulator::{self};

/// A calendar day: year, month, day.
pub type Day = (i32, u8, u8);

/// A CA made for one test, and a server certificate it signed for 127.0.0.1 and localhost.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        Self::with_server_names(vec!["127.0.0.1".into(), "localhost".into()])
    }

    pub fn with_server_names(names: Vec<String>) -> Self {
        Self::issue(&names, None)
    }

    /// A new CA and a server certificate it signed for `names`, valid from the first day to
    /// the second (rcgen's long default when `None`).
    pub fn issue(names: &[String], validity: Option<(Day, Day)>) -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "chat-gateway test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let mut params = rcgen::CertificateParams::new(names.to_vec()).expect("params");
        if let Some(((y0, m0, d0), (y1, m1, d1))) = validity {
            params.not_before = rcgen::date_time_ymd(y0, m0, d0);
            params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        }
        let server = params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server cert");
        let server_config = emulator::tls_config(
            server.pem().as_bytes(),
            server_key.serialize_pem().as_bytes(),
        )
        .expect("tls config");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
        std::fs::write(dir.path().join("server.pem"), server.pem()).expect("write cert");
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem())
            .expect("write key");
        let client_key = rcgen::KeyPair::generate().expect("client key");
        let mut client_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "chat-gateway test client");
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params
            .signed_by(&client_key, &ca, &ca_key)
            .expect("client cert");
        std::fs::write(dir.path().join("client.pem"), client.pem()).expect("write cert");
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem())
            .expect("write key");
        TestCa {
            dir,
            ca_pem: ca.pem(),
            server_config,
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A client certificate the CA signed and its key, as PEM files.
    pub fn client_files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("client.pem"),
            self.dir.path().join("client.key"),
        )
    }

    /// The server certificate and its key, as PEM files (for a server run as a process).
    pub fn server_files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("server.pem"),
            self.dir.path().join("server.key"),
        )
    }
}
