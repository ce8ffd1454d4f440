//! The `squilla` binary's tests: real processes, real HTTP on loopback. One binary, a module
//! per area.

mod dev;
mod e2e;
mod run;
mod streams;
mod websocket;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// `squilla`, run from the repository's root.
pub fn squilla() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_squilla"));
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    cmd.env_remove("SQUILLA_CONFIG");
    cmd
}

/// A fresh directory under the system's temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("squilla-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port free right now on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process whose standard error is read line by line (and echoed, prefixed, to the
/// test's own), killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
}

impl Proc {
    /// Starts `squilla ARGS`, named `name` in the test's output.
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        let mut child = squilla()
            .args(args)
            .env("SQUILLA_LOG", std::env::var("TEST_SQUILLA_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                let _ = tx.send(line);
            }
        });
        Proc { name: name.into(), child, lines }
    }

    /// The first line containing `needle`, within `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("{}: no line with `{needle}` in {timeout:?}", self.name),
                Err(RecvTimeoutError::Disconnected) => panic!("{}: exited before printing `{needle}`", self.name),
            }
        }
    }

    /// Kills the process (SIGKILL: no chance to clean up, as in a crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
