//! The dashboard in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`) driven over WebDriver by `fantoccini`, against
//! the router on a real TCP port, with the principal read from cookies by
//! the same resolver the API uses.
//!
//! Without Chromium and ChromeDriver these tests print that they were
//! skipped; with `ASYNC_QUERY_REQUIRE_BROWSER=1` (as `.ci/run` sets) a
//! missing browser fails them. `ASYNC_QUERY_UPDATE_SCREENSHOTS=1` copies
//! the screenshots they take (always under `target/dashboard/`) to `docs/`.
#![cfg(feature = "dashboard")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_query::http::{self, AuthError, HttpOptions};
use async_query::testing::ScriptedExecutor;
use async_query::{AsyncQueryService, Config, MemoryDao, Principal, QueryStatus, SubmitRequest};
use axum::http::request::Parts;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// How long the page gets for anything it should show.
const PATIENCE: Duration = Duration::from_secs(20);

/// The principal from the cookies `aq_user` and `aq_roles`, as a host's
/// session resolver would read it (401 without them).
fn cookie_principal(parts: &Parts) -> Result<Principal, AuthError> {
    let cookie = |name: &str| {
        parts
            .headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_owned())
    };
    let user = cookie("aq_user").ok_or_else(|| AuthError::unauthorized("no session cookie"))?;
    let mut principal = Principal::new(user);
    for role in cookie("aq_roles").unwrap_or_default().split(',') {
        if !role.is_empty() {
            principal = principal.with_role(role);
        }
    }
    Ok(principal)
}

/// The service behind the router (with the dashboard) on a free port.
struct Site {
    base: String,
    service: AsyncQueryService,
}

async fn site(pool_size: usize) -> Site {
    site_with(pool_size, HttpOptions::default()).await
}

async fn site_with(pool_size: usize, options: HttpOptions) -> Site {
    let service = AsyncQueryService::builder()
        .config(Config {
            pool_size,
            max_queued: 50,
            ..Config::default()
        })
        .dao(Arc::new(MemoryDao::new()))
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .expect("service builds");
    let app = http::router_with_options(service.clone(), cookie_principal, options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Site { base, service }
}

/// `name` as an executable: `variable` if set, else the first of
/// `candidates` on `PATH`.
fn program(variable: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(variable).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    candidates.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Where the screenshots go: `target/dashboard/`, and `docs/` when asked.
fn save_screenshot(name: &str, png: &[u8]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("dashboard");
    std::fs::create_dir_all(&target).expect("create target/dashboard");
    std::fs::write(target.join(name), png).expect("write the screenshot");
    if std::env::var("ASYNC_QUERY_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        std::fs::write(root.join("docs").join(name), png).expect("write docs/ screenshot");
    }
}

/// Ends the browser session, then the service.
async fn finish(browser: Browser, site: Site) {
    browser.close().await;
    site.service
        .shutdown(Duration::from_millis(100))
        .await
        .expect("shutdown");
}

/// Headless Chromium through its own ChromeDriver.
struct Browser {
    client: Client,
    downloads: tempfile::TempDir,
    _driver: Child,
}

impl Browser {
    /// A new browser, or `None` (said loudly) where Chromium or
    /// ChromeDriver is not installed and `ASYNC_QUERY_REQUIRE_BROWSER` is
    /// not `1`.
    async fn start(test: &str) -> Option<Browser> {
        let driver = program(
            "ASYNC_QUERY_CHROMEDRIVER",
            &["chromedriver", "chromium-driver"],
        );
        let chromium = program(
            "ASYNC_QUERY_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            let why = "Chromium and ChromeDriver are not installed \
                (apt-get install chromium chromium-driver)";
            if std::env::var("ASYNC_QUERY_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("{test}: {why}, and ASYNC_QUERY_REQUIRE_BROWSER=1");
            }
            eprintln!("\n*** SKIPPED {test}: {why} ***\n");
            return None;
        };
        // Port 0: ChromeDriver picks a free port and says which, so no
        // other listener can take it between a probe and its start.
        let mut child = Command::new(&driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let port = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.expect("read ChromeDriver's output") {
                if let Some(port) = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok())
                {
                    return port;
                }
            }
            panic!("{} ended without saying its port", driver.display())
        })
        .await
        .unwrap_or_else(|_| panic!("{} did not start within {PATIENCE:?}", driver.display()));
        // Keep reading (and dropping) its output, so it never blocks on a
        // full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let downloads = tempfile::tempdir().expect("a download directory");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         "--force-device-scale-factor=1"],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object literal")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("open a Chromium session: {e}"));
        Some(Browser {
            client,
            downloads,
            _driver: child,
        })
    }

    /// Signs in as `user` with `roles` (the session cookies), opens the
    /// dashboard and waits for its live connection.
    async fn open_as(&self, site: &Site, user: &str, roles: &str) {
        self.sign_in(site, user, roles).await;
        self.open_in_mode(site, "live").await;
    }

    /// Sets the session cookies of `user` with `roles`.
    async fn sign_in(&self, site: &Site, user: &str, roles: &str) {
        let c = &self.client;
        // Cookies are set for the page's origin, so be on it first.
        c.goto(&format!("{}/ui/style.css", site.base))
            .await
            .expect("goto");
        // (Set from the page: ChromeDriver refuses WebDriver cookies for
        // an IP address as the domain.)
        c.execute(
            "document.cookie = `aq_user=${arguments[0]}; path=/; SameSite=Strict`;\
             document.cookie = `aq_roles=${arguments[1]}; path=/; SameSite=Strict`;\
             return document.cookie;",
            vec![json!(user), json!(roles)],
        )
        .await
        .expect("set the session cookies");
    }

    /// Opens the dashboard and waits for its connection `mode` (`live`
    /// on the event stream, `polling` on `/asyncEvents`).
    async fn open_in_mode(&self, site: &Site, mode: &str) {
        let c = &self.client;
        c.goto(&format!("{}/ui", site.base))
            .await
            .expect("goto /ui");
        self.eventually_with(
            &format!("the page's connection {mode}"),
            "return document.getElementById('connection').dataset.mode === arguments[0]",
            vec![json!(mode)],
        )
        .await;
        // Marks this page load: still set at the end means no reload.
        c.execute("window.__sameLoad = true; return true;", vec![])
            .await
            .expect("mark the page");
    }

    /// Runs `script` every 50 ms until it returns something other than
    /// `false` or `null`, and returns that; fails after [`PATIENCE`].
    async fn eventually(&self, what: &str, script: &str) -> Value {
        self.eventually_with(what, script, vec![]).await
    }

    async fn eventually_with(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let value = self
                .client
                .execute(script, args.clone())
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                let rows = self.rows().await;
                let problem = self
                    .client
                    .execute(
                        "return [document.getElementById('problem').textContent,\
                         document.getElementById('announce').textContent,\
                         document.getElementById('connection').dataset.mode]",
                        vec![],
                    )
                    .await
                    .unwrap_or_default();
                panic!(
                    "not seen within {PATIENCE:?}: {what}; rows {rows:?}; \
                     [problem, announcement, connection] {problem}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `(id, status, query)` of each row of the jobs table, top to bottom.
    async fn rows(&self) -> Vec<(String, String, String)> {
        let value = self
            .client
            .execute(
                "return [...document.querySelectorAll('#jobs tbody tr')].map(r => \
                 [r.dataset.id, r.dataset.status, r.querySelector('code.query').textContent])",
                vec![],
            )
            .await
            .expect("read the jobs table");
        serde_json::from_value(value).expect("rows of three strings")
    }

    /// Submits `query` through the form: an export in `format`, or a query
    /// with its result in the record; returns the new job's id.
    async fn submit(&self, query: &str, export: Option<&str>) -> String {
        let c = &self.client;
        let text = c.find(Locator::Css("#query")).await.expect("#query");
        text.clear().await.expect("clear");
        text.send_keys(query).await.expect("type the query");
        let kind = if export.is_some() {
            "tableExport"
        } else {
            "asyncQuery"
        };
        c.find(Locator::Css(&format!("input[name=kind][value={kind}]")))
            .await
            .expect("kind radio")
            .click()
            .await
            .expect("choose the kind");
        if let Some(format) = export {
            c.find(Locator::Css("#format"))
                .await
                .expect("#format")
                .select_by_value(format)
                .await
                .expect("choose the format");
        }
        c.find(Locator::Css("#submit button[type=submit]"))
            .await
            .expect("submit button")
            .click()
            .await
            .expect("submit");
        let id = self
            .eventually_with(
                &format!("a row for {query:?}"),
                "const row = [...document.querySelectorAll('#jobs tbody tr')]\
                 .find(r => r.querySelector('code.query').textContent === arguments[0]);\
                 return row ? row.dataset.id : null;",
                vec![json!(query)],
            )
            .await;
        id.as_str().expect("an id").to_owned()
    }

    /// Waits until job `id`'s row shows `status`.
    async fn status_becomes(&self, id: &str, status: &str) {
        self.eventually_with(
            &format!("job {id} {status}"),
            "const row = document.querySelector(`#jobs tr[data-id=\"${arguments[0]}\"]`);\
             return !!row && row.dataset.status === arguments[1] \
             && row.querySelector('.status').textContent === arguments[1];",
            vec![json!(id), json!(status)],
        )
        .await;
    }

    /// Runs `fetch(path)` in the page (with its cookies) and returns the
    /// HTTP status.
    async fn fetch_status(&self, path: &str) -> u64 {
        let value = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];\
                 fetch(arguments[0], { credentials: 'same-origin' })\
                 .then(r => done(r.status), e => done(String(e)));",
                vec![json!(path)],
            )
            .await
            .expect("fetch in the page");
        value
            .as_u64()
            .unwrap_or_else(|| panic!("fetch {path}: {value}"))
    }

    /// Asserts the page was never reloaded since [`open_as`](Self::open_as).
    async fn assert_same_load(&self) {
        let same = self
            .client
            .execute("return window.__sameLoad === true", vec![])
            .await
            .expect("read the mark");
        assert_eq!(same, json!(true), "the page was reloaded");
    }

    /// The one finished file in the download directory, once Chromium is
    /// done writing it.
    async fn downloaded(&self) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let files: Vec<PathBuf> = std::fs::read_dir(self.downloads.path())
                .expect("read the download directory")
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .collect();
            let finished: Vec<&PathBuf> = files
                .iter()
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    !name.ends_with(".crdownload") && !name.starts_with('.')
                })
                .collect();
            if files.len() == 1 && finished.len() == 1 {
                return std::fs::read(finished[0]).expect("read the download");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no finished download in {:?}: {files:?}",
                self.downloads.path()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A screenshot of the whole page from the top, `height` pixels tall.
    async fn screenshot(&self, name: &str, height: u32) {
        self.client
            .execute(
                "document.activeElement && document.activeElement.blur(); \
                 window.scrollTo(0, 0); return true;",
                vec![],
            )
            .await
            .expect("scroll to the top");
        self.client
            .set_window_size(1280, height)
            .await
            .expect("resize the window");
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        save_screenshot(name, &png);
    }

    async fn close(self) {
        self.client.close().await.expect("end the session");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_submits_watches_cancels_and_downloads_without_a_reload() {
    let Some(browser) = Browser::start("dashboard user").await else {
        return;
    };
    let site = site(4).await;
    let alice = Principal::new("alice");
    browser.open_as(&site, "alice", "").await;
    assert!(browser.rows().await.is_empty());
    let empty = browser
        .client
        .find(Locator::Css("#empty"))
        .await
        .expect("#empty");
    assert!(empty.is_displayed().await.expect("displayed"));

    // A slow query: running with a progress bar, then complete, live.
    let slow = browser.submit("progress 40 every 100", None).await;
    browser.status_becomes(&slow, "PROCESSING").await;
    let progress = browser
        .eventually_with(
            "a progress bar on the running job",
            "const bar = document.querySelector(`tr[data-id=\"${arguments[0]}\"] progress`);\
             return bar && bar.value > 0 ? [bar.value, bar.max] : null;",
            vec![json!(slow)],
        )
        .await;
    assert_eq!(progress[1], json!(40), "{progress}");
    browser.status_becomes(&slow, "COMPLETE").await;
    let job = site
        .service
        .get(&alice, slow.parse().expect("uuid"))
        .await
        .expect("get");
    assert_eq!(job.status, QueryStatus::Complete);

    // Cancel a running job with its button, from the keyboard.
    let blocked = browser.submit("block", None).await;
    browser.status_becomes(&blocked, "PROCESSING").await;
    browser
        .client
        .find(Locator::Css(&format!(
            "tr[data-id=\"{blocked}\"] button.cancel"
        )))
        .await
        .expect("a cancel button")
        // From the keyboard: focus the button and press Enter.
        .send_keys("\u{E007}")
        .await
        .expect("press Enter on cancel");
    browser.status_becomes(&blocked, "CANCEL_COMPLETE").await;
    let job = site
        .service
        .get(&alice, blocked.parse().expect("uuid"))
        .await
        .expect("get");
    assert_eq!(job.status, QueryStatus::CancelComplete);

    // A failure shows its message.
    let failed = browser.submit("fail no such table: nope", None).await;
    browser.status_becomes(&failed, "FAILURE").await;
    let message = browser
        .client
        .find(Locator::Css(&format!("tr[data-id=\"{failed}\"] .message")))
        .await
        .expect("a message")
        .text()
        .await
        .expect("text");
    assert!(message.contains("no such table: nope"), "{message}");

    // An export, downloaded by clicking its link: the same bytes as the
    // service serves.
    let export = browser.submit("rows 50", Some("CSV")).await;
    browser.status_becomes(&export, "COMPLETE").await;
    browser
        .client
        .find(Locator::Css(&format!(
            "tr[data-id=\"{export}\"] a.download"
        )))
        .await
        .expect("a download link")
        .click()
        .await
        .expect("click download");
    let downloaded = browser.downloaded().await;
    let stored = common::read_download(
        site.service
            .download(&alice, export.parse().expect("uuid"), None)
            .await
            .expect("download"),
    )
    .await;
    assert_eq!(downloaded, stored);
    assert_eq!(common::csv_rows(&downloaded).len(), 50);

    // Newest first, all of it on one page load, still live.
    let ids: Vec<String> = browser.rows().await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, [export.as_str(), &failed, &blocked, &slow]);
    browser.assert_same_load().await;
    let mode = browser
        .client
        .execute(
            "return document.getElementById('connection').dataset.mode",
            vec![],
        )
        .await
        .expect("mode");
    assert_eq!(mode, json!("live"));
    // Not an admin: no overview.
    let overview = browser
        .client
        .find(Locator::Css("#overview"))
        .await
        .expect("#overview");
    assert!(!overview.is_displayed().await.expect("displayed"));

    // The screenshot, with one job running.
    let running = browser.submit("progress 600 every 100", None).await;
    browser.status_becomes(&running, "PROCESSING").await;
    browser
        .eventually_with(
            "progress on the running job",
            "const bar = document.querySelector(`tr[data-id=\"${arguments[0]}\"] progress`);\
             return !!bar && bar.value >= 3;",
            vec![json!(running)],
        )
        .await;
    browser.screenshot("dashboard-user.png", 1000).await;

    finish(browser, site).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_principal_sees_none_of_the_firsts_jobs_and_an_admin_sees_all() {
    let Some(browser) = Browser::start("dashboard principals").await else {
        return;
    };
    // Three slots: alice's export finishes, two of her jobs block.
    let site = site(3).await;
    let alice = Principal::new("alice");
    let mut alices = Vec::new();
    let submit = async |query: &str| {
        let request = if query.starts_with("rows") {
            SubmitRequest::export(query, async_query::ExportFormat::CSV)
        } else {
            SubmitRequest::query(query)
        }
        .with_async_after(Duration::ZERO);
        let job = site.service.submit(&alice, request).await.expect("submit");
        job.id.to_string()
    };
    for query in ["rows 20", "block", "block"] {
        alices.push(submit(query).await);
    }

    browser.open_as(&site, "bob", "").await;
    assert!(browser.rows().await.is_empty(), "bob sees alice's jobs");
    for id in &alices {
        assert_eq!(
            browser.fetch_status(&format!("/asyncQuery/{id}")).await,
            404
        );
    }
    assert_eq!(browser.fetch_status("/asyncOverview").await, 403);
    let bobs = browser.submit("sleep 50", None).await;
    browser.status_becomes(&bobs, "COMPLETE").await;
    let rows = browser.rows().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, bobs);
    browser.assert_same_load().await;

    // Two more of alice's: one takes the last slot, one waits.
    for query in ["block", "block"] {
        alices.push(submit(query).await);
    }

    // An admin sees everyone's jobs, the principal column and the overview.
    browser.open_as(&site, "root", "admin").await;
    let every = browser
        .eventually(
            "every job listed",
            "const rows = document.querySelectorAll('#jobs tbody tr');\
             return rows.length === 6 ? rows.length : null;",
        )
        .await;
    assert_eq!(every, json!(6));
    let overview = site
        .service
        .overview(&Principal::new("root").with_role("admin"))
        .await
        .expect("overview");
    assert_eq!((overview.queued, overview.running), (1, 3));
    let shown = browser
        .eventually(
            "the overview's figures",
            "const o = document.getElementById('overview');\
             return o.hidden ? null : [document.getElementById('ov-queued').textContent,\
             document.getElementById('ov-running').textContent,\
             [...document.querySelectorAll('#ov-principals tbody td')].map(td => td.textContent)];",
        )
        .await;
    assert_eq!(shown, json!(["1", "3", ["alice", "1", "3"]]));
    let oldest = browser
        .client
        .find(Locator::Css("#ov-oldest"))
        .await
        .expect("#ov-oldest")
        .text()
        .await
        .expect("text");
    let queued = overview.oldest_queued.as_ref().expect("a queued job");
    assert!(
        oldest.starts_with(&queued.id.to_string()[..8]) && oldest.contains("alice"),
        "{oldest}"
    );

    // Filtered by principal, from the keyboard.
    let filter = browser
        .client
        .find(Locator::Css("#filter-principal"))
        .await
        .expect("#filter-principal");
    filter
        .send_keys("bob\u{E007}")
        .await
        .expect("type and Enter");
    browser
        .eventually(
            "only bob's job",
            "const rows = [...document.querySelectorAll('#jobs tbody tr')];\
             return rows.length === 1 ? rows[0].dataset.id : null;",
        )
        .await
        .as_str()
        .map(|id| assert_eq!(id, bobs))
        .expect("an id");
    filter.clear().await.expect("clear");
    filter.send_keys("\u{E007}").await.expect("Enter");
    browser
        .eventually(
            "every job again",
            "return document.querySelectorAll('#jobs tbody tr').length === 6",
        )
        .await;
    browser.assert_same_load().await;
    browser.screenshot("dashboard-admin.png", 1500).await;

    finish(browser, site).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_event_stream_the_page_polls_and_still_sees_changes() {
    let Some(browser) = Browser::start("dashboard polling").await else {
        return;
    };
    // No stream is allowed (as behind a proxy that refuses them): the
    // stream answers 503 and the page polls /asyncEvents instead.
    let mut options = HttpOptions::default();
    options.max_event_streams = 0;
    let site = site_with(2, options).await;
    browser.sign_in(&site, "alice", "").await;
    browser.open_in_mode(&site, "polling").await;
    let slow = browser.submit("sleep 1500", None).await;
    browser.status_becomes(&slow, "PROCESSING").await;
    browser.status_becomes(&slow, "COMPLETE").await;
    // A job submitted elsewhere (the API, another tab) appears too.
    let job = site
        .service
        .submit(
            &Principal::new("alice"),
            SubmitRequest::query("elsewhere").with_async_after(Duration::ZERO),
        )
        .await
        .expect("submit");
    browser
        .status_becomes(&job.id.to_string(), "COMPLETE")
        .await;
    browser.assert_same_load().await;
    finish(browser, site).await;
}

/// The page and its assets over plain HTTP (no browser needed): embedded,
/// at the configured path, under a strict policy, told where the API is.
#[tokio::test]
async fn the_page_is_served_at_its_path_with_its_assets_and_a_strict_policy() {
    let options = HttpOptions::default()
        .with_dashboard_path("ops/")
        .expect("a free path");
    assert_eq!(options.dashboard_path(), "/ops");
    let site = site_with(1, options).await;
    let client = reqwest::Client::new();
    let get = async |path: &str| {
        let response = client
            .get(format!("{}{path}", site.base))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.expect("body");
        (status, headers, body)
    };
    let (status, headers, page) = get("/ops").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().expect("ascii");
    assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        page.contains(r#"<script src="/ops/app.js" defer>"#),
        "{page}"
    );
    assert!(page.contains(r#"<meta name="async-query-api" content="">"#));
    let formats = page
        .split(r#"<meta name="async-query-formats" content=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the formats meta tag");
    let names: Vec<&str> = site.service.formats().names().map(|f| f.as_str()).collect();
    assert_eq!(formats, names.join(","));
    assert!(names.contains(&"CSV"), "{names:?}");
    // Nothing on the page comes from elsewhere.
    for needle in ["http://", "https://", "//cdn"] {
        assert!(!page.contains(needle), "{needle} in the page");
    }
    assert_eq!(get("/ops/").await.0, 200);
    let (status, headers, script) = get("/ops/app.js").await;
    assert_eq!(
        (status, &headers["content-type"]),
        (
            200,
            &"text/javascript; charset=utf-8".parse().expect("header")
        )
    );
    assert!(script.contains("EventSource"));
    let (status, headers, _) = get("/ops/style.css").await;
    assert_eq!(
        (status, &headers["content-type"]),
        (200, &"text/css; charset=utf-8".parse().expect("header"))
    );
    // Moved, so not at the default; the API is untouched.
    assert_eq!(get("/ui").await.0, 404);
    assert_eq!(get("/asyncQuery").await.0, 401);

    // Nested under a prefix, the page points at the API there.
    let nested = axum::Router::new().nest(
        "/jobs",
        http::router(site.service.clone(), cookie_principal),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, nested).await });
    let page = client
        .get(format!("{base}/jobs/ui"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    assert!(
        page.contains(r#"<meta name="async-query-api" content="/jobs">"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<script src="/jobs/ui/app.js" defer>"#),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_jobs_load_on_request_and_the_list_stays_newest_first() {
    let Some(browser) = Browser::start("dashboard older jobs").await else {
        return;
    };
    let site = site(2).await;
    let alice = Principal::new("alice");
    // Five exports, then 130 queries: one page (100) of each collection
    // first, so the exports, older than every query shown, wait.
    for n in 0..5 {
        let request = SubmitRequest::export(format!("rows {n}"), async_query::ExportFormat::CSV);
        site.service.submit(&alice, request).await.expect("submit");
    }
    for n in 0..130 {
        let request = SubmitRequest::query(format!("query {n}"));
        site.service.submit(&alice, request).await.expect("submit");
    }
    browser.open_as(&site, "alice", "").await;
    let created = "return [...document.querySelectorAll('#jobs tbody tr')]\
                   .map(r => r.querySelector('time').getAttribute('datetime'))";
    let first = browser
        .eventually(
            "the first page",
            "const n = document.querySelectorAll('#jobs tbody tr').length; return n ? n : null;",
        )
        .await;
    assert_eq!(first, json!(100));
    let rows = browser.rows().await;
    assert_eq!(rows[0].2, "query 129");
    assert!(rows.iter().all(|r| r.2.starts_with("query ")), "{rows:?}");
    let more = browser
        .client
        .find(Locator::Css("#more"))
        .await
        .expect("#more");
    assert!(more.is_displayed().await.expect("displayed"));
    more.click().await.expect("show older jobs");
    browser
        .eventually(
            "every job",
            "return document.querySelectorAll('#jobs tbody tr').length === 135",
        )
        .await;
    // Newest first by `createdOn`, which the API gives to the millisecond:
    // jobs of the same millisecond (an export and a query submitted in a
    // row) may come in either order, but each collection keeps the
    // service's order.
    let rows = browser.rows().await;
    let queries: Vec<&str> = rows
        .iter()
        .map(|r| r.2.as_str())
        .filter(|q| q.starts_with("query "))
        .collect();
    let expected: Vec<String> = (0..130).rev().map(|n| format!("query {n}")).collect();
    assert_eq!(queries, expected);
    let exports: Vec<&str> = rows
        .iter()
        .map(|r| r.2.as_str())
        .filter(|q| q.starts_with("rows "))
        .collect();
    assert_eq!(exports, ["rows 4", "rows 3", "rows 2", "rows 1", "rows 0"]);
    let times: Vec<String> = serde_json::from_value(
        browser
            .client
            .execute(created, vec![])
            .await
            .expect("times"),
    )
    .expect("strings");
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert!(!more.is_displayed().await.expect("displayed"));
    browser.assert_same_load().await;
    finish(browser, site).await;
}

/// A path the router could not serve beside the API is refused up front
/// with a reason, rather than panicking in axum or hiding a route.
#[test]
fn a_dashboard_path_that_collides_with_the_api_is_refused() {
    assert_eq!(HttpOptions::default().dashboard_path(), "/ui");
    for (path, why) in [
        ("/asyncQuery", "one of the API's routes"),
        ("export/ui", "one of the API's routes"),
        ("/asyncEvents/ui", "one of the API's routes"),
        ("/", "is empty"),
        ("", "is empty"),
        ("/ui/{id}", "may hold only"),
        ("/ui/*rest", "may hold only"),
        ("/my ui", "may hold only"),
        ("/ops/../ui", "segment"),
        ("/ops/./ui", "segment"),
        ("/ops//ui", "segment"),
    ] {
        match HttpOptions::default().with_dashboard_path(path) {
            Err(async_query::Error::Config { reason }) => {
                assert!(reason.contains(why), "{path:?}: {reason}");
            }
            other => panic!("{path:?} was not refused: {other:?}"),
        }
    }
    let nested = HttpOptions::default()
        .with_dashboard_path("/admin/jobs/")
        .expect("a free path");
    assert_eq!(nested.dashboard_path(), "/admin/jobs");
}
