//! A small W3C WebDriver client over reqwest, enough to drive Debian's Chromium through its
//! `chromedriver` (both installed by `.ci/run`): open pages, find elements, type, click, read
//! text and properties, run a script, take screenshots. Every wait is bounded.

use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use serde_json::{Value, json};

use crate::{free_port, temp_dir};

/// The key WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running `chromedriver` and one headless Chromium session; both end when dropped.
pub struct Browser {
    url: String,
    http: reqwest::Client,
    driver: std::process::Child,
    _profile: std::path::PathBuf,
}

/// An element of the page.
#[derive(Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    pub async fn start(name: &str) -> Browser {
        let port = free_port();
        // Its own process group, so that dropping the browser ends chromedriver and every
        // Chromium process it started, whatever state the test left them in.
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver, installed by .ci/run)");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = temp_dir(&format!("chromium-{name}"));
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1100",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let answer: Value =
            http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session =
            answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {answer}")).to_owned();
        Browser { url: format!("{base}/session/{session}"), http, driver, _profile: profile }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).timeout(Duration::from_secs(30));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        let value = answer["value"].clone();
        if value.get("error").is_some() { Err(value) } else { Ok(value) }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body)).await.unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    /// The first element matching the CSS `selector` now, if any.
    pub async fn find(&self, selector: &str) -> Option<Element> {
        let found = self
            .command(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": selector})))
            .await;
        found.ok().and_then(|v| v[ELEMENT].as_str().map(|id| Element(id.to_owned())))
    }

    /// How many elements match `selector` now.
    pub async fn count(&self, selector: &str) -> usize {
        let found = self.post("/elements", json!({"using": "css selector", "value": selector})).await;
        found.as_array().map_or(0, Vec::len)
    }

    /// Waits (at most `timeout`) for an element matching `selector`.
    pub async fn wait(&self, selector: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find(selector).await {
                return e;
            }
            assert!(Instant::now() < deadline, "no `{selector}` within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (at most `timeout`) until `selector`'s text satisfies `done`; the text.
    pub async fn wait_text(&self, selector: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Some(e) = self.find(selector).await {
                last = self.text(&e).await;
                if done(&last) {
                    return last;
                }
            }
            assert!(Instant::now() < deadline, "`{selector}` never showed what was wanted; last text: {last:?}");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// The element's visible text.
    pub async fn text(&self, e: &Element) -> String {
        let v = self.command(reqwest::Method::GET, &format!("/element/{}/text", e.0), None).await;
        v.ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }

    /// A DOM property of the element (`value`, `dataset`…), as JSON.
    pub async fn property(&self, e: &Element, name: &str) -> Value {
        self.command(reqwest::Method::GET, &format!("/element/{}/property/{name}", e.0), None).await.unwrap_or_default()
    }

    /// Clicks the element.
    pub async fn click(&self, e: &Element) {
        self.post(&format!("/element/{}/click", e.0), json!({})).await;
    }

    /// Clears the element and types `text` into it.
    pub async fn fill(&self, e: &Element, text: &str) {
        self.post(&format!("/element/{}/clear", e.0), json!({})).await;
        self.post(&format!("/element/{}/value", e.0), json!({"text": text})).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its result.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args})).await
    }

    /// Every cookie of the page, `HttpOnly` ones included.
    pub async fn cookies(&self) -> Vec<Value> {
        let all = self.command(reqwest::Method::GET, "/cookie", None).await.unwrap_or_default();
        all.as_array().cloned().unwrap_or_default()
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let shot = self.command(reqwest::Method::GET, "/screenshot", None).await.unwrap();
        base64(shot.as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (as WebDriver sends screenshots) to bytes.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, d)| acc | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes_what_webdriver_sends() {
    assert_eq!(base64("aGVsbG8="), b"hello");
    assert_eq!(base64("aGk="), b"hi");
    assert_eq!(base64("YWJj"), b"abc");
}
