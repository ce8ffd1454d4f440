//! The web console in a real browser: headless Chromium, driven through chromedriver (Debian's
//! packages, installed by `.ci/run`), against a real `squilla dev` running the README's demo
//! job. It signs in (a wrong token first), opens the job, watches the charts move and the
//! sink's tail arrive, runs a query (and a broken one), scales a stage and sees the new worker,
//! reads a trapping guest's log, and visits every page. `SQUILLA_BLESS=1` copies the
//! screenshots into docs/console/.

use std::time::Duration;

use serde_json::{Value, json};

use crate::webdriver::Browser;
use crate::{Proc, free_port, temp_dir};

const WAIT: Duration = Duration::from_secs(30);

/// Keeps a screenshot in the test's directory, and in docs/console/ when blessing.
async fn shot(browser: &Browser, dir: &std::path::Path, name: &str) {
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    if std::env::var_os("SQUILLA_BLESS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join(format!("{name}.png")), &png).unwrap();
    }
}

/// How long the page took: its navigation, and the console's own rendering of the route.
async fn timings(browser: &Browser) -> (f64, f64) {
    let t = browser
        .script(
            "const n = performance.getEntriesByType('navigation')[0];\
             return [n ? n.duration : 0, Number(document.body.dataset.readyMs || 0)];",
            json!([]),
        )
        .await;
    (t[0].as_f64().unwrap_or(0.0), t[1].as_f64().unwrap_or(0.0))
}

async fn points(browser: &Browser, chart: &str) -> u64 {
    let canvas = browser.wait(chart, WAIT).await;
    browser.property(&canvas, "dataset").await["points"].as_str().and_then(|p| p.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_drives_a_running_job_in_a_real_browser() {
    let dir = temp_dir("console");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let data = dir.join("data");
    let listen = format!("127.0.0.1:{port}");
    let dev = Proc::spawn(
        "dev",
        &["dev", "examples/device-errors/job.json", "--listen", &listen, "--data-dir", data.to_str().unwrap()],
    );
    dev.wait_for("the output of `device-errors-1` follows", Duration::from_secs(120));
    let token = std::fs::read_to_string(data.join("dev.token")).unwrap().trim().to_owned();

    // A second job whose stage traps on every batch, logging first.
    let api = |method: reqwest::Method, path: &str, body: Vec<u8>| {
        let (base, token) = (base.clone(), token.clone());
        let path = path.to_owned();
        async move {
            let response = reqwest::Client::new()
                .request(method, format!("{base}{path}"))
                .bearer_auth(token)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, body) = api(reqwest::Method::POST, "/api/v1/artifacts", squilla_guests::read("hostile")).await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    let hostile_sha = body["sha256"].as_str().unwrap()[..12].to_owned();
    let spec = json!({"name": "trapper", "source": {"kind": "ingest"},
        "stages": [{"name": "only", "artifact": format!("sha256:{}", body["sha256"].as_str().unwrap()), "params": {"process": "trap"}}]});
    let (status, body) = api(reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api(reqwest::Method::POST, "/api/v1/clusters/trapper/jobs", vec![]).await;
    assert_eq!(status, 201, "{body}");
    let trapper = body["id"].as_str().unwrap().to_owned();

    let browser = Browser::start("console").await;
    browser.goto(&format!("{base}/")).await;

    // A wrong token is refused, and nothing else is shown.
    let input = browser.wait("#token", WAIT).await;
    browser.fill(&input, "not-the-token-0123456789").await;
    browser.click(&browser.wait("#signin-submit", WAIT).await).await;
    browser.wait_text("#signin-error", WAIT, |t| t.contains("not valid")).await;
    assert!(browser.find("#jobs").await.is_none());
    shot(&browser, &dir, "sign-in").await;

    // The right one opens the jobs page; the session is a cookie script cannot read.
    browser.fill(&browser.wait("#token", WAIT).await, &token).await;
    browser.click(&browser.wait("#signin-submit", WAIT).await).await;
    browser.wait_text("#jobs-body", WAIT, |t| t.contains("device-errors-1") && t.contains("running")).await;
    let cookies = browser.script("return document.cookie;", json!([])).await;
    assert_eq!(cookies, "", "the session cookie is HttpOnly");
    let (navigation, jobs_ready) = timings(&browser).await;
    shot(&browser, &dir, "jobs").await;

    // The job page: its state, charts that move as events flow.
    browser.click(&browser.wait("a[href='#/jobs/device-errors-1']", WAIT).await).await;
    browser.wait_text("#job-state", WAIT, |t| t == "running").await;
    let deadline = std::time::Instant::now() + WAIT;
    let first = loop {
        let p = points(&browser, "#chart-in").await;
        if p >= 2 {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "the chart never got points");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let moved = loop {
        let p = points(&browser, "#chart-in").await;
        if p > first {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "the chart did not move");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(moved > first);
    let rate = browser.wait_text("#chart-in-now", WAIT, |t| t.ends_with("/s") && t != "0/s").await;
    let job_ready = timings(&browser).await.1;
    while points(&browser, "#chart-in").await < 8 {
        assert!(std::time::Instant::now() < deadline + WAIT, "the chart stopped");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    browser.script("window.scrollTo(0, 0);", json!([])).await;
    shot(&browser, &dir, "job").await;

    // The sink's tail, through a query.
    browser.fill(&browser.wait("#query", WAIT).await, "SELECT \"device-type\", errors WHERE errors >= 0").await;
    browser.click(&browser.wait("#tail-start", WAIT).await).await;
    let tail = browser.wait_text("#tail", WAIT, |t| t.lines().count() >= 3).await;
    for line in tail.lines() {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(event["device-type"].is_string() && event["errors"].is_number(), "{line}");
        assert!(event.get("requests").is_none(), "only the selected fields: {line}");
    }
    shot(&browser, &dir, "job-tail").await;
    browser.click(&browser.wait("#tail-start", WAIT).await).await; // stop

    // A query that does not parse: the error, with a caret at its position.
    browser.fill(&browser.wait("#query", WAIT).await, "SELECT errors WHERE").await;
    browser.click(&browser.wait("#tail-start", WAIT).await).await;
    let error = browser.wait_text("#tail-error", WAIT, |t| t.contains("invalid_query")).await;
    assert!(error.contains("column"), "{error}");
    let caret = browser.text(&browser.wait("#query-caret", WAIT).await).await;
    assert!(caret.starts_with("SELECT errors WHERE") && caret.trim_end().ends_with('^'), "{caret:?}");

    // Scale the stage to 3 and see the new worker run.
    browser.fill(&browser.wait("#scale-error-rate", WAIT).await, "3").await;
    browser.click(&browser.wait("#scale-button-error-rate", WAIT).await).await;
    browser
        .wait_text("#workers-error-rate tr[data-worker='error-rate/2']", WAIT, |t| {
            t.contains("running") && t.contains("dev-agent")
        })
        .await;
    assert_eq!(browser.count("#workers-error-rate tbody tr").await, 3);

    // A trapping guest's log, followed live.
    browser.goto(&format!("{base}/#/jobs/{trapper}")).await;
    browser.wait_text("#job-state", WAIT, |t| t == "running").await;
    browser.click(&browser.wait("button[aria-label='Log of only worker 0']", WAIT).await).await;
    let ingest = json!({"n": 1}).to_string() + "\n" + &json!({"n": 2}).to_string() + "\n";
    let (status, body) =
        api(reqwest::Method::POST, &format!("/api/v1/jobs/{trapper}/ingest"), ingest.into_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let log = browser.wait_text("#log", WAIT, |t| t.contains("trapping on a batch of 2 events")).await;
    assert!(log.contains(" error "), "{log}");
    shot(&browser, &dir, "worker-log").await;

    // Every other page.
    let mut ready = vec![("jobs", jobs_ready), ("job", job_ready)];
    for (page, selector, expect) in [
        ("clusters", "#clusters", "device-errors"),
        ("artifacts", "#artifacts", hostile_sha.as_str()),
        ("agents", "#agents", "dev-agent"),
    ] {
        browser.click(&browser.wait(&format!("#nav a[href='#/{page}']"), WAIT).await).await;
        browser.wait_text(selector, WAIT, |t| t.contains(expect)).await;
        ready.push((page, timings(&browser).await.1));
        shot(&browser, &dir, page).await;
    }
    eprintln!("console: first load {navigation:.0} ms; pages ready (ms): {ready:?}; input rate shown {rate}");

    // The session cookie: HttpOnly and SameSite=Strict; it authenticates reads, and changes only
    // with the console's header.
    let cookie =
        browser.cookies().await.into_iter().find(|c| c["name"] == "squilla_session").expect("a session cookie");
    assert_eq!((cookie["httpOnly"].as_bool(), cookie["sameSite"].as_str()), (Some(true), Some("Strict")), "{cookie}");
    let header = format!("squilla_session={}", cookie["value"].as_str().unwrap());
    let with_cookie = |method: reqwest::Method, path: &str| {
        reqwest::Client::new().request(method, format!("{base}{path}")).header("cookie", header.clone())
    };
    assert_eq!(with_cookie(reqwest::Method::GET, "/api/v1/jobs").send().await.unwrap().status(), 200);
    let kill = format!("/api/v1/jobs/{trapper}/kill");
    let refused = with_cookie(reqwest::Method::POST, &kill).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "console_header_required");

    // Another origin's page (another port, a sibling subdomain) gets nothing with the cookie,
    // and cannot sign anyone in.
    let foreign =
        with_cookie(reqwest::Method::GET, "/api/v1/jobs").header("origin", "http://127.0.0.1:1").send().await.unwrap();
    assert_eq!(foreign.status(), 403);
    let sibling =
        with_cookie(reqwest::Method::GET, "/api/v1/jobs").header("sec-fetch-site", "same-site").send().await.unwrap();
    assert_eq!(sibling.status(), 403);
    let sign_in = reqwest::Client::new()
        .post(format!("{base}/console/session"))
        .body(json!({"token": token}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(sign_in.status(), 403, "no sign-in without the console's header");
    let cached = with_cookie(reqwest::Method::GET, "/api/v1/jobs").send().await.unwrap();
    assert_eq!(cached.headers()["cache-control"], "private, no-store");

    // Signing out ends the session: the cookie no longer opens anything.
    browser.click(&browser.wait("#sign-out", WAIT).await).await;
    browser.wait("#token", WAIT).await;
    assert_eq!(with_cookie(reqwest::Method::GET, "/api/v1/jobs").send().await.unwrap().status(), 401);
    browser.goto(&format!("{base}/#/jobs")).await;
    browser.wait("#token", WAIT).await;
    assert!(browser.find("#jobs").await.is_none(), "signed out: the sign-in page again");
    drop(dev);
}
