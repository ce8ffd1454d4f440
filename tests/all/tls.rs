//! HTTPS for the master's API and a gateway, with a CA made for the test by `openssl`: the CLI,
//! an agent and a gateway verify the master with `--ca`; without it, or in plain HTTP, nothing
//! gets through.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::streams::{Sub, ids, ndjson, submit, two_filters};
use crate::{Api, Proc, TOKEN, agent_with, free_port, gateway, master_with, squilla, temp_dir};

/// A CA, and a certificate for `127.0.0.1` it signed: `(ca.pem, server.pem, server.key)`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=squilla test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
    run(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

fn trusting(ca: &Path) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder().add_root_certificate(root).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_a_gateway_serve_https_that_clients_verify_with_their_ca() {
    let dir = temp_dir("tls");
    let (ca, cert, key) = certificates(&dir);
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("acme {TOKEN}\n")).unwrap();
    let port = free_port();
    let (cert_s, key_s, ca_s) = (cert.display().to_string(), key.display().to_string(), ca.display().to_string());
    let master = master_with(port, &dir.join("data"), &tokens, &["--tls-cert", &cert_s, "--tls-key", &key_s]);
    let url = format!("https://127.0.0.1:{port}");
    let mut procs: Vec<Proc> = vec![master];

    // The CLI verifies the master with `--ca`; without it the master is a stranger.
    let cli = |extra: &[&str]| {
        let mut args = vec!["job", "list", "--master", &url, "--token", TOKEN];
        args.extend_from_slice(extra);
        squilla().args(&args).output().unwrap()
    };
    let trusted = cli(&["--ca", &ca_s]);
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    let stranger = cli(&[]);
    assert!(!stranger.status.success());
    let why = String::from_utf8_lossy(&stranger.stderr).to_lowercase();
    assert!(why.contains("certificate") || why.contains("issuer"), "{why}");
    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v1/jobs"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    // An agent joins over HTTPS, and a gateway serving HTTPS itself sits in front.
    procs.push(agent_with("a1", &url, &["--threads", "1", "--ca", &ca_s]));
    let gport = free_port();
    procs.push(gateway(&url, gport, &["--ca", &ca_s, "--tls-cert", &cert_s, "--tls-key", &key_s]));
    let via = Api { base: format!("https://127.0.0.1:{gport}"), http: trusting(&ca) };
    let (status, body) = via
        .call(reqwest::Method::POST, "/api/v1/artifacts?name=filter&version=0.1.0", squilla_guests::read("filter"))
        .await;
    assert_eq!(status, 201, "{body}");
    let job = submit(&via, two_filters("secure", "off"), "secure").await;
    let mut sink = Sub::open(&via, &format!("/api/v1/jobs/{job}/sink")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the gateway connects to the agent
    let (status, body) = via.call(reqwest::Method::POST, &format!("/api/v1/jobs/{job}/ingest"), ndjson(0..30)).await;
    assert_eq!(status, 200, "{body}");
    let (events, _) = sink.read(Duration::from_secs(20), |e| e.len() >= 10).await;
    assert_eq!(ids(&events), (0..30).filter(|i| i % 3 == 0).collect(), "over HTTPS end to end");
    drop(procs);
}
