//! Headless Chromium driven over W3C WebDriver (Debian's `chromium` and
//! `chromium-driver`), for tests of the operator console's real page.
//!
//! A dozen WebDriver commands over the `reqwest` the workspace already
//! builds: what the tests need, without a client crate's dependency tree.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{free_port, wait_for};

/// The key W3C WebDriver names element references with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long to wait for the page to show something.
pub const PAGE_WAIT: Duration = Duration::from_secs(30);

/// One browser session, with its own chromedriver and profile directory;
/// both go on drop.
pub struct Browser {
    http: reqwest::Client,
    driver: Child,
    session: String,
    profile: std::path::PathBuf,
}

/// An element of the current page.
#[derive(Clone, Debug)]
pub struct Element(String);

fn find_exe(names: &[&str], fixed: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .chain(fixed.iter().map(std::path::PathBuf::from))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. Fails, saying
    /// what to install, when either is missing.
    pub async fn start() -> Self {
        let driver_exe = find_exe(&["chromedriver"], &["/usr/bin/chromedriver"]).expect(
            "chromedriver not found: install Debian's chromium and chromium-driver \
             (apt-get install chromium chromium-driver; .ci/run does)",
        );
        let chromium = find_exe(&["chromium", "chromium-browser"], &["/usr/bin/chromium"])
            .expect("chromium not found: install Debian's chromium and chromium-driver");
        let port = free_port();
        // Its own process group, so the browser it starts goes with it.
        let driver = Command::new(driver_exe)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_for("chromedriver to answer", PAGE_WAIT, || {
            let http = http.clone();
            let url = format!("{base}/status");
            async move {
                let v: Value = http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                if v["value"]["ready"] == true {
                    Ok(())
                } else {
                    Err(v.to_string())
                }
            }
        })
        .await;
        let profile =
            std::env::temp_dir().join(format!("dashtam-chromium-{}", uuid::Uuid::now_v7()));
        // The flags that keep Chromium off the (closed) network and quiet
        // as root in a container.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("create a WebDriver session")
            .json()
            .await
            .expect("a WebDriver answer");
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {resp}"))
            .to_owned();
        Self {
            http,
            driver,
            session: format!("{base}/session/{session}"),
            profile,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(v["value"]["message"]
                .as_str()
                .unwrap_or("webdriver error")
                .to_owned())
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }))
            .await
            .expect("navigate");
    }

    /// The first element matching `css`, if there is one now.
    pub async fn find(&self, css: &str) -> Result<Element, String> {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await?;
        v[ELEMENT]
            .as_str()
            .map(|id| Element(id.to_owned()))
            .ok_or_else(|| format!("no element reference in {v}"))
    }

    /// Waits until an element matching `css` is on the page and shown.
    pub async fn wait(&self, css: &str) -> Element {
        wait_for(&format!("{css} on the page"), PAGE_WAIT, || async {
            let e = self.find(css).await?;
            if self.displayed(&e).await? {
                Ok(e)
            } else {
                Err(format!("{css} is hidden"))
            }
        })
        .await
    }

    /// Waits until the text of the element matching `css` satisfies `ok`,
    /// and returns it.
    pub async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        wait_for(&format!("the text of {css}"), PAGE_WAIT, || async {
            let e = self.find(css).await?;
            let t = self.text(&e).await?;
            if ok(&t) { Ok(t) } else { Err(t) }
        })
        .await
    }

    pub async fn displayed(&self, e: &Element) -> Result<bool, String> {
        let v = self.get(&format!("/element/{}/displayed", e.0)).await?;
        Ok(v == true)
    }

    pub async fn text(&self, e: &Element) -> Result<String, String> {
        let v = self.get(&format!("/element/{}/text", e.0)).await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    pub async fn attribute(&self, e: &Element, name: &str) -> Result<Option<String>, String> {
        let v = self
            .get(&format!("/element/{}/attribute/{name}", e.0))
            .await?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// Clicks the element matching `css` once it is shown (again if the
    /// page replaced it between finding and clicking: views refresh).
    pub async fn click(&self, css: &str) {
        wait_for(&format!("a click on {css}"), PAGE_WAIT, || async {
            let e = self.wait(css).await;
            self.post(&format!("/element/{}/click", e.0), json!({}))
                .await
        })
        .await;
    }

    /// Types `text` into the field matching `css` (keyboard input, as a
    /// person would).
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait(css).await;
        self.post(&format!("/element/{}/value", e.0), json!({ "text": text }))
            .await
            .unwrap_or_else(|m| panic!("type into {css}: {m}"));
    }

    /// Runs `script` in the page (its `return` value comes back).
    pub async fn execute(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
            .unwrap_or_else(|m| panic!("script failed: {m}"))
    }

    /// Saves what the page looks like now as a PNG.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let v = self.get("/screenshot").await.expect("screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the screenshot directory");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and every Chromium process it started share one
        // process group: end them all, even when a test failed midway.
        // (`--` first: procps' kill reads `-KILL -1234` as
        // kill(-1, SIGKILL), every process there is.)
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
