//! The agents' data port admits only holders of the fleet's key: a stranger who reaches it is
//! refused before a single frame is read, while agents keep exchanging batches (the jobs over
//! two agents in the other tests cross the same handshake).

use std::io::{Read, Write};
use std::time::Duration;

use crate::{AGENT_TOKEN, Proc, free_port, temp_dir};

#[test]
fn a_stranger_is_refused_before_any_frame() {
    let dir = temp_dir("dataport");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = crate::queries::master(&dir, port);
    let agent = Proc::spawn("a1", &["agent", "--master", &base, "--agent-token", AGENT_TOKEN, "--id", "a1"]);
    let line = agent.wait_for("data at", Duration::from_secs(20));
    let data = line.split("data at ").nth(1).and_then(|r| r.split(',').next()).unwrap().trim().to_owned();

    for attempt in ["a hello frame straight away", "64 bytes of guessing"] {
        let mut conn = std::net::TcpStream::connect(&data).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut nonce = [0u8; 32];
        conn.read_exact(&mut nonce).expect("the agent speaks first: its nonce");
        let bytes: Vec<u8> = if attempt.starts_with("a hello") {
            // Frame-like bytes, as a peer speaking the protocol without the key would send.
            let mut frame = vec![1u8];
            frame.extend_from_slice(&7u32.to_be_bytes());
            frame.extend_from_slice(b"mallory");
            frame.resize(64, 0);
            frame
        } else {
            vec![0x5a; 64]
        };
        conn.write_all(&bytes).unwrap();
        let mut rest = Vec::new();
        let read = conn.read_to_end(&mut rest);
        assert!(read.is_err() || rest.is_empty(), "{attempt}: the agent answered {rest:?}");
        agent.wait_for("data port connection refused", Duration::from_secs(10));
    }
}
