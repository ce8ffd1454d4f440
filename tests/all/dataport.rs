//! The agents' data port admits only agents of the fleet: by default each end presents a
//! certificate the master's CA issued (TLS 1.3), and a stranger — speaking in the clear,
//! with no certificate, or with one a different CA made for the same name — is refused
//! before a single frame is read. With `--data-security key` the handshake proves the agent
//! token instead. (The jobs over two agents in the other tests cross the same handshakes.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use squilla_host::transport::frame::{self, Frame};

use crate::{AGENT_TOKEN, Proc, free_port, temp_dir};

/// A master and one agent (with `extra` arguments): the test's directory, the master's URL,
/// the agent's data address, and the two processes.
fn cluster(name: &str, extra: &[&str]) -> (std::path::PathBuf, String, String, Proc, Proc) {
    let dir = temp_dir(name);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let master = crate::queries::master(&dir, port);
    let mut args = vec!["agent", "--master", &base, "--agent-token", AGENT_TOKEN, "--id", "a1"];
    args.extend_from_slice(extra);
    let agent = Proc::spawn("a1", &args);
    let line = agent.wait_for("data at", Duration::from_secs(20));
    let data = line.split("data at ").nth(1).and_then(|r| r.split(',').next()).unwrap().trim().to_owned();
    (dir, base, data, master, agent)
}

fn hello(agent: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    frame::write(&mut bytes, &Frame::Hello { agent: agent.into() }).unwrap();
    bytes
}

/// A TLS client trusting `ca`, presenting `identity` (certificate and key, PEM) if any.
fn client(ca: &str, identity: Option<(String, String)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    })
}

/// Dials the data port over TLS and says hello as `agent`: whether the agent is still
/// listening a second later (it waits for the next frame) rather than having closed the
/// connection.
fn admitted(data: &str, config: Arc<rustls::ClientConfig>, agent: &str) -> bool {
    let mut sock = TcpStream::connect(data).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut conn = rustls::ClientConnection::new(config, "squilla-agent".try_into().unwrap()).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    if tls.write_all(&hello(agent)).and_then(|()| tls.flush()).is_err() {
        return false;
    }
    // The agent never writes on a batch connection before an `open`: a second of silence
    // means it is waiting for more; an end or an error means it closed us out.
    let mut byte = [0u8; 1];
    match tls.read_exact(&mut byte) {
        Err(e) => matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        Ok(()) => false,
    }
}

/// A certificate for `agent` from the master, asked for as an agent does.
fn certificate_from(base: &str, agent: &str) -> (String, String, String) {
    let (key, csr) = squilla_net::ca::request(agent).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answer: serde_json::Value = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{base}/api/v1/agent/certificate"))
            .bearer_auth(AGENT_TOKEN)
            .json(&serde_json::json!({ "agent": agent, "csr": csr }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    });
    let text = |k: &str| answer[k].as_str().unwrap().to_owned();
    (text("ca"), text("certificate"), key)
}

fn wait_until_listed(base: &str, agent: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let api = crate::Api { base: base.to_owned(), http: reqwest::Client::new() };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, agents) = api.call(reqwest::Method::GET, "/api/v1/agents", Vec::new()).await;
            if agents.to_string().contains(&format!("\"{agent}\"")) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{agent} never joined: {agents}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn strangers_and_forged_certificates_are_refused_before_any_frame() {
    let (dir, base, data, _master, agent) = cluster("dataport-tls", &[]);
    // An agent heartbeats only once it holds its certificate.
    wait_until_listed(&base, "a1");
    let ca = std::fs::read_to_string(dir.join("data/ca/ca.pem")).expect("the master keeps its CA in its data dir");

    // Frames in the clear.
    let mut plain = TcpStream::connect(&data).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = plain.write_all(&hello("mallory"));
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest);
    assert!(rest.len() < 16, "at most a TLS alert came back: {rest:?}");
    agent.wait_for("data port connection refused", Duration::from_secs(10));

    // TLS without a certificate.
    assert!(!admitted(&data, client(&ca, None), "mallory"), "no certificate");
    agent.wait_for("data port connection refused", Duration::from_secs(10));

    // A certificate for the agents' name from a CA of the attacker's own.
    let forged = {
        let other = squilla_net::ca::Authority::generate().unwrap();
        let (key, csr) = squilla_net::ca::request("a2").unwrap();
        (other.issue(&csr, "a2", squilla_net::ca::LIFETIME).unwrap().certificate, key)
    };
    assert!(!admitted(&data, client(&ca, Some(forged)), "a2"), "a forged certificate");
    agent.wait_for("data port connection refused", Duration::from_secs(10));

    // What an agent of the fleet holds gets in, under its own name only.
    let (issuer, certificate, key) = certificate_from(&base, "a2");
    assert_eq!(issuer, ca);
    assert!(admitted(&data, client(&ca, Some((certificate.clone(), key.clone()))), "a2"), "a genuine certificate");
    assert!(!admitted(&data, client(&ca, Some((certificate, key))), "a1"), "a2's certificate speaking as a1");
}

#[test]
fn with_the_key_handshake_a_stranger_is_refused_before_any_frame() {
    let (_dir, _base, data, _master, agent) = cluster("dataport-key", &["--data-security", "key"]);
    for attempt in ["a hello frame straight away", "64 bytes of guessing"] {
        let mut conn = TcpStream::connect(&data).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut nonce = [0u8; 32];
        conn.read_exact(&mut nonce).expect("the agent speaks first: its nonce");
        let mut bytes = if attempt.starts_with("a hello") { hello("mallory") } else { vec![0x5a; 64] };
        bytes.resize(64, 0);
        conn.write_all(&bytes).unwrap();
        let mut rest = Vec::new();
        let read = conn.read_to_end(&mut rest);
        assert!(read.is_err() || rest.is_empty(), "{attempt}: the agent answered {rest:?}");
        agent.wait_for("data port connection refused", Duration::from_secs(10));
    }
}
