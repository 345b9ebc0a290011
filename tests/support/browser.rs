//! A small Chrome DevTools Protocol client for the browser tests: it starts
//! Debian's Chromium headless, drives one page and collects its console
//! errors.
//!
//! Include it from a test binary with
//!
//! ```ignore
//! #[path = "support/browser.rs"]
//! mod browser;
//! ```
//!
//! - The binary is `chromium` (Debian's package), or `$CHROMIUM`.
//! - The browser runs headless with a throwaway profile, no sandbox (tests may
//!   run as root) and host resolution limited to loopback, so a page can reach
//!   nothing but the servers the test started. It is killed (its whole
//!   process group) and its profile removed when the [`Browser`] is dropped.
//! - The protocol is spoken over the DevTools websocket from a thread of its
//!   own, so the public API is `async` for tokio tests but also works while a
//!   test panics: a failing test leaves `failure.png` next to its other
//!   screenshots and prints the page's URL, text and console errors.
//! - Waits poll with a deadline ([`Browser::timeout`], 15 s by default) and
//!   say in their failure message what they awaited, the page's URL and the
//!   start of its text. Getters wait for their element first.
//! - Screenshots go to `$YATAI_TEST_ARTIFACTS/screenshots/<test>/<name>.png`,
//!   by default under `<workspace>/target/test-artifacts`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

/// Default deadline of every wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

/// Where test artifacts (screenshots) go.
pub fn artifacts_dir() -> PathBuf {
    match std::env::var_os("YATAI_TEST_ARTIFACTS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/test-artifacts")),
    }
}

/// The Chromium binary: `$CHROMIUM`, else `chromium` on the PATH.
pub fn chromium_bin() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

/// Something the page reported as an error.
#[derive(Debug, Clone)]
pub struct ConsoleError {
    /// `exception`, `console` or `log:<source>` (for example `log:network`).
    pub kind: String,
    pub text: String,
    /// Where it came from, when the browser said.
    pub url: Option<String>,
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.kind, self.text)?;
        if let Some(url) = &self.url {
            write!(f, " ({url})")?;
        }
        Ok(())
    }
}

/// The result of [`Browser::horizontal_overflow`].
#[derive(Debug, Clone)]
pub struct Overflow {
    /// The layout viewport's width (CSS px).
    pub viewport: i64,
    /// The document's scroll width.
    pub content: i64,
    /// `content - viewport`, or 0.
    pub over: i64,
    /// The elements reaching furthest right beyond the viewport (their box,
    /// or their content when it overflows them visibly, like a long word).
    pub culprits: Vec<String>,
}

/// Where a navigation started (see [`Browser::start_navigation`]).
struct Nav {
    loads: u64,
    started: Instant,
    mark: String,
}

/// A number not used before in this process.
fn next_mark() -> u64 {
    static MARKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    MARKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What the protocol thread shares with the [`Browser`].
#[derive(Default)]
struct Shared {
    errors: Vec<ConsoleError>,
    /// Messages of JavaScript dialogs (alert, confirm…), which are accepted.
    dialogs: Vec<String>,
    /// Set when the page crashed or the connection ended.
    gone: Option<String>,
    /// The latest page events (method and a detail), for failure messages.
    recent: std::collections::VecDeque<String>,
}

type Reply = Box<dyn FnOnce(Result<Value, String>) + Send>;

struct Call {
    method: String,
    params: Value,
    session: Option<String>,
    reply: Reply,
}

/// A headless Chromium with one page.
pub struct Browser {
    child: Option<Child>,
    profile: Option<tempfile::TempDir>,
    calls: mpsc::UnboundedSender<Call>,
    session: String,
    shared: Arc<Mutex<Shared>>,
    /// Counts the page's `load` events.
    loads: watch::Receiver<u64>,
    io_thread: Option<std::thread::JoinHandle<()>>,
    /// Each navigation waited for: the URL reached and how long it took.
    navigations: Mutex<Vec<(String, Duration)>>,
    /// The deadline of waits.
    pub timeout: Duration,
    /// Relative URLs given to [`Browser::goto`] are resolved against this.
    pub base_url: Option<String>,
    /// The screenshot directory's name: the test's name by default.
    pub test_name: String,
    /// Whether to save `failure.png` and print diagnostics when dropped during a panic.
    pub diagnose_on_panic: bool,
}

impl Browser {
    /// Starts Chromium and opens a page on `about:blank`.
    pub async fn launch() -> Browser {
        let test_name = std::thread::current()
            .name()
            .map(|n| n.replace("::", "-"))
            .filter(|n| n != "main")
            .unwrap_or_else(|| format!("pid{}", std::process::id()));
        Self::launch_named(&test_name).await
    }

    /// Like [`Browser::launch`], with the screenshots under `name`.
    pub async fn launch_named(name: &str) -> Browser {
        let profile = tempfile::Builder::new().prefix("yatai-chromium-").tempdir().expect("a profile directory");
        let stderr_path = profile.path().join("chromium.stderr");
        let user_data = profile.path().join("user-data");
        std::fs::create_dir_all(&user_data).unwrap();
        let bin = chromium_bin();
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
            // Nothing but loopback: no name resolves but localhost, and every
            // other address (IP literals too) goes to a proxy that is not there;
            // loopback bypasses proxies implicitly. No background traffic either.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-breakpad",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--metrics-recording-only",
            "--no-first-run",
            "--no-default-browser-check",
            "--password-store=basic",
            "--use-mock-keychain",
            "--mute-audio",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
            "--lang=en-US",
        ]);
        // Extra flags from $CHROMIUM_FLAGS (space-separated); their
        // --disable-features joins ours (Chromium keeps only one).
        let mut disabled = [
            "Translate",
            "OptimizationHints",
            "MediaRouter",
            "DialMediaRouteProvider",
            "AutofillServerCommunication",
            "CertificateTransparencyComponentUpdater",
            "InterestFeedContentSuggestions",
        ]
        .join(",");
        for flag in std::env::var("CHROMIUM_FLAGS").unwrap_or_default().split_whitespace() {
            match flag.strip_prefix("--disable-features=") {
                Some(more) => disabled = format!("{disabled},{more}"),
                None => {
                    cmd.arg(flag);
                }
            }
        }
        cmd.arg(format!("--disable-features={disabled}"));
        cmd.arg(format!("--user-data-dir={}", user_data.display()));
        cmd.arg("about:blank");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&stderr_path).unwrap());
        // Its own process group, so that drop ends the renderers and helpers too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {bin} ({e}); install Debian's chromium (scripts/setup-test-deps) or set CHROMIUM")
        });

        // Chromium writes the port and the browser target's path once it listens.
        let port_file = user_data.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws_url = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
                }
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = kill_group(&mut child);
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!(
                    "{bin} did not open its DevTools port ({}); its stderr:\n{log}",
                    match exited {
                        Some(status) => format!("exited: {status}"),
                        None => "30 s".to_owned(),
                    }
                );
            }
            tokio::time::sleep(POLL).await;
        };

        let (calls, shared, loads, io_thread) = match connect(&ws_url).await {
            Ok(v) => v,
            Err(e) => {
                let _ = kill_group(&mut child);
                panic!("cannot connect to {bin}'s DevTools at {ws_url}: {e}");
            }
        };
        let mut browser = Browser {
            child: Some(child),
            profile: Some(profile),
            calls,
            session: String::new(),
            shared,
            loads,
            io_thread: Some(io_thread),
            navigations: Mutex::new(Vec::new()),
            timeout: DEFAULT_TIMEOUT,
            base_url: None,
            test_name: name.to_owned(),
            diagnose_on_panic: true,
        };
        let target = browser.call_browser("Target.createTarget", json!({"url": "about:blank"})).await;
        let target_id = target["targetId"].as_str().expect("a targetId").to_owned();
        let attached =
            browser.call_browser("Target.attachToTarget", json!({"targetId": target_id, "flatten": true})).await;
        browser.session = attached["sessionId"].as_str().expect("a sessionId").to_owned();
        for domain in ["Page", "Runtime", "Log", "Network"] {
            browser.call(&format!("{domain}.enable"), json!({})).await;
        }
        browser.call("Page.setLifecycleEventsEnabled", json!({"enabled": true})).await;
        browser
    }

    /// Sets the base URL against which paths given to [`Browser::goto`] resolve.
    pub fn with_base(mut self, base: &str) -> Browser {
        self.base_url = Some(base.trim_end_matches('/').to_owned());
        self
    }

    /// The browser's process id (the leader of its process group).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The throwaway profile directory, removed at drop.
    pub fn profile_dir(&self) -> Option<PathBuf> {
        self.profile.as_ref().map(|p| p.path().to_owned())
    }

    // --- the protocol ------------------------------------------------------

    async fn send(&self, session: Option<String>, method: &str, params: Value) -> Result<Value, String> {
        let (tx, rx) = oneshot::channel();
        let call = Call {
            method: method.to_owned(),
            params,
            session,
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        };
        if self.calls.send(call).is_err() {
            return Err(self.gone_reason());
        }
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.gone_reason()),
            Err(_) => Err(format!("no answer to {method} within 60 s")),
        }
    }

    fn gone_reason(&self) -> String {
        self.shared.lock().unwrap().gone.clone().unwrap_or_else(|| "the browser connection closed".to_owned())
    }

    /// Sends a command to the page's session; `Err` is the browser's error message.
    pub async fn try_call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.send(Some(self.session.clone()), method, params).await
    }

    /// Sends a command to the page's session; panics on a protocol error.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.try_call(method, params).await.unwrap_or_else(|e| panic!("CDP {method} failed: {e}"))
    }

    /// Sends a command to the browser target.
    pub async fn call_browser(&self, method: &str, params: Value) -> Value {
        self.send(None, method, params).await.unwrap_or_else(|e| panic!("CDP {method} failed: {e}"))
    }

    /// Sends a command and waits for the answer from a non-async context (drop).
    fn call_blocking(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let call = Call {
            method: method.to_owned(),
            params,
            session: Some(self.session.clone()),
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        };
        self.calls.send(call).map_err(|_| self.gone_reason())?;
        rx.recv_timeout(timeout).map_err(|e| format!("{method}: {e}"))?
    }

    // --- JavaScript --------------------------------------------------------

    /// Evaluates `js` in the page (awaiting a promise) and returns its value;
    /// `Err` carries the exception.
    pub async fn try_eval(&self, js: &str) -> Result<Value, String> {
        let r = self
            .try_call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true, "awaitPromise": true, "userGesture": true}),
            )
            .await?;
        if let Some(details) = r.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("exception")
                .to_owned();
            return Err(text);
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluates `js` in the page and returns its value (JSON); panics on an exception.
    pub async fn eval(&self, js: &str) -> Value {
        match self.try_eval(js).await {
            Ok(v) => v,
            Err(e) => panic!("evaluating {js} failed: {e}\n{}", self.where_am_i().await),
        }
    }

    /// The page's URL.
    pub async fn current_url(&self) -> String {
        self.try_eval("location.href").await.ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }

    /// The page's URL and the start of its text, for failure messages.
    pub async fn where_am_i(&self) -> String {
        let url = self.current_url().await;
        let text = self
            .try_eval("document.body ? document.body.innerText : ''")
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let state = self.try_eval("document.readyState").await.ok().and_then(|v| v.as_str().map(str::to_owned));
        format!("  page: {url} ({})\n  text: {}", state.unwrap_or_default(), snippet(&text, 800))
    }

    // --- navigation --------------------------------------------------------

    fn resolve(&self, url: &str) -> String {
        match (&self.base_url, url.starts_with('/')) {
            (Some(base), true) => format!("{base}{url}"),
            _ => url.to_owned(),
        }
    }

    /// Navigates to `url` (a path resolves against [`Browser::base_url`]) and
    /// waits for its `load` event.
    pub async fn goto(&self, url: &str) {
        let url = self.resolve(url);
        let nav = self.start_navigation().await;
        let r = self.call("Page.navigate", json!({"url": url})).await;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            panic!("navigating to {url} failed: {e}");
        }
        // A same-document navigation (#fragment) has no loader and no load event.
        if r.get("loaderId").is_some() {
            self.wait_load(nav, &format!("the load of {url}")).await;
        }
    }

    /// Reloads the page and waits for its `load` event.
    pub async fn reload(&self) {
        let nav = self.start_navigation().await;
        self.call("Page.reload", json!({})).await;
        self.wait_load(nav, "the reload").await;
    }

    /// Notes where the page is before an action that navigates: the count of
    /// `load` events, the time, and a mark left in the current document.
    async fn start_navigation(&self) -> Nav {
        let mark = format!("{}-{}", std::process::id(), next_mark());
        let _ = self.try_eval(&format!("window.__yataiDocument = {}", js_str(&mark))).await;
        Nav { loads: *self.loads.borrow(), started: Instant::now(), mark }
    }

    /// Waits for the document after `nav`: its `load` event, or (should
    /// the event not arrive) a complete document without the mark.
    async fn wait_load(&self, nav: Nav, what: &str) {
        let deadline = Instant::now() + self.timeout;
        let replaced =
            format!("window.__yataiDocument !== {} && document.readyState === 'complete'", js_str(&nav.mark));
        let mut loads = self.loads.clone();
        loop {
            if *loads.borrow_and_update() > nav.loads
                || self.try_eval(&replaced).await.is_ok_and(|v| v == Value::Bool(true))
            {
                let url = self.current_url().await;
                self.navigations.lock().unwrap().push((url, nav.started.elapsed()));
                return;
            }
            if let Some(gone) = self.shared.lock().unwrap().gone.clone() {
                panic!("waiting for {what}: {gone}");
            }
            if Instant::now() > deadline {
                let recent = self.shared.lock().unwrap().recent.iter().cloned().collect::<Vec<_>>().join("\n    ");
                panic!(
                    "timed out after {:?} waiting for {what}\n{}\n  latest page events:\n    {recent}",
                    self.timeout,
                    self.where_am_i().await
                )
            }
            let _ = tokio::time::timeout(POLL, loads.changed()).await;
        }
    }

    /// Runs `action` (which should make the page navigate) and waits for the
    /// next page's `load` event.
    async fn navigating(&self, what: &str, action: impl Future<Output = ()>) {
        let nav = self.start_navigation().await;
        action.await;
        self.wait_load(nav, what).await;
    }

    /// Every navigation waited for so far (by `goto`, `reload`, `submit`,
    /// `click_and_wait`): the URL it reached and how long it took from the
    /// action to the `load` event.
    pub fn navigation_times(&self) -> Vec<(String, Duration)> {
        self.navigations.lock().unwrap().clone()
    }

    // --- waiting -----------------------------------------------------------

    /// Polls `js` until it evaluates to a truthy value; returns that value.
    /// Exceptions count as "not yet" (the page may be between documents).
    pub async fn wait_until_for(&self, js: &str, what: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last_error = match self.try_eval(js).await {
                Ok(v) if truthy(&v) => return v,
                Ok(_) => None,
                Err(e) => Some(e),
            };
            if Instant::now() > deadline {
                let error = last_error.map(|e| format!("\n  last exception: {e}")).unwrap_or_default();
                panic!("timed out after {timeout:?} waiting for {what}{error}\n{}", self.where_am_i().await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls the JavaScript expression `js` until it is truthy.
    pub async fn wait_until(&self, js: &str) -> Value {
        self.wait_until_for(js, &format!("`{js}` to be true"), self.timeout).await
    }

    /// Waits until an element matches `selector`.
    pub async fn wait_for(&self, selector: &str) {
        self.wait_until_for(
            &format!("!!document.querySelector({})", js_str(selector)),
            &format!("`{selector}`"),
            self.timeout,
        )
        .await;
    }

    /// Waits until no element matches `selector`.
    pub async fn wait_for_none(&self, selector: &str) {
        self.wait_until_for(
            &format!("!document.querySelector({})", js_str(selector)),
            &format!("no `{selector}`"),
            self.timeout,
        )
        .await;
    }

    /// Waits until an element matching `selector` contains `text` (in its `innerText`).
    pub async fn wait_for_text(&self, selector: &str, text: &str) {
        self.wait_for_text_within(selector, text, self.timeout).await
    }

    /// [`Browser::wait_for_text`] with its own deadline.
    pub async fn wait_for_text_within(&self, selector: &str, text: &str, timeout: Duration) {
        let js = format!(
            "Array.from(document.querySelectorAll({})).some(e => (e.innerText || e.textContent || '').includes({}))",
            js_str(selector),
            js_str(text)
        );
        self.wait_until_for(&js, &format!("`{selector}` containing {text:?}"), timeout).await;
    }

    // --- reading the DOM ---------------------------------------------------

    /// The trimmed `innerText` of the first element matching `selector` (waited for).
    pub async fn text(&self, selector: &str) -> String {
        self.wait_for(selector).await;
        let js =
            format!("(e => (e.innerText || e.textContent || '').trim())(document.querySelector({}))", js_str(selector));
        self.eval(&js).await.as_str().unwrap_or_default().to_owned()
    }

    /// The trimmed texts of all elements matching `selector` (none: empty).
    pub async fn texts(&self, selector: &str) -> Vec<String> {
        let js = format!(
            "Array.from(document.querySelectorAll({})).map(e => (e.innerText || e.textContent || '').trim())",
            js_str(selector)
        );
        serde_json::from_value(self.eval(&js).await).unwrap_or_default()
    }

    /// An attribute of the first element matching `selector` (waited for).
    pub async fn attr(&self, selector: &str, name: &str) -> Option<String> {
        self.wait_for(selector).await;
        let js = format!("document.querySelector({}).getAttribute({})", js_str(selector), js_str(name));
        self.eval(&js).await.as_str().map(str::to_owned)
    }

    /// A property (like `value` or `checked`) of the first element matching `selector` (waited for).
    pub async fn prop(&self, selector: &str, name: &str) -> Value {
        self.wait_for(selector).await;
        self.eval(&format!("document.querySelector({})[{}]", js_str(selector), js_str(name))).await
    }

    /// How many elements match `selector` now (no waiting).
    pub async fn count(&self, selector: &str) -> usize {
        self.eval(&format!("document.querySelectorAll({}).length", js_str(selector))).await.as_u64().unwrap_or(0)
            as usize
    }

    /// Whether an element matches `selector` now (no waiting).
    pub async fn exists(&self, selector: &str) -> bool {
        self.count(selector).await > 0
    }

    /// The page's HTML.
    pub async fn html(&self) -> String {
        self.eval("document.documentElement.outerHTML").await.as_str().unwrap_or_default().to_owned()
    }

    // --- acting ------------------------------------------------------------

    /// Sets an input's or textarea's value and dispatches `input` and `change`.
    pub async fn fill(&self, selector: &str, value: &str) {
        self.wait_for(selector).await;
        let js = format!(
            "(e => {{ e.focus(); e.value = {}; e.dispatchEvent(new Event('input', {{bubbles: true}})); \
             e.dispatchEvent(new Event('change', {{bubbles: true}})); return e.value; }})(document.querySelector({}))",
            js_str(value),
            js_str(selector)
        );
        let set = self.eval(&js).await;
        assert_eq!(set.as_str(), Some(value), "`{selector}` did not take the value {value:?}");
    }

    /// Chooses the option whose value is `value` in a `<select>` (waits for
    /// the option to exist) and dispatches `input` and `change`.
    pub async fn select(&self, selector: &str, value: &str) {
        let option = format!(
            "Array.from((document.querySelector({}) || {{options: []}}).options).some(o => o.value === {})",
            js_str(selector),
            js_str(value)
        );
        self.wait_until_for(&option, &format!("an option {value:?} in `{selector}`"), self.timeout).await;
        let js = format!(
            "(e => {{ e.value = {}; e.dispatchEvent(new Event('input', {{bubbles: true}})); \
             e.dispatchEvent(new Event('change', {{bubbles: true}})); return e.value; }})(document.querySelector({}))",
            js_str(value),
            js_str(selector)
        );
        let set = self.eval(&js).await;
        assert_eq!(set.as_str(), Some(value), "`{selector}` did not take the value {value:?}");
    }

    /// Clicks the first element matching `selector` with real mouse events at
    /// its centre, once it is visible and not covered by another element.
    pub async fn click(&self, selector: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return null; \
             e.scrollIntoView({{block: 'center', inline: 'center'}}); \
             const r = e.getBoundingClientRect(); if (r.width === 0 || r.height === 0) return null; \
             const x = r.left + r.width / 2, y = r.top + r.height / 2; \
             const hit = document.elementFromPoint(x, y); \
             if (!hit || !(hit === e || e.contains(hit) || hit.contains(e) && hit.tagName === 'LABEL')) return null; \
             return {{x, y}}; }})()",
            js_str(selector)
        );
        let at = self.wait_until_for(&js, &format!("`{selector}` to be visible and clickable"), self.timeout).await;
        let (x, y) = (at["x"].as_f64().unwrap(), at["y"].as_f64().unwrap());
        self.call("Input.dispatchMouseEvent", json!({"type": "mouseMoved", "x": x, "y": y})).await;
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1}),
            )
            .await;
        }
    }

    /// Clicks (see [`Browser::click`]) and waits for the page that the click navigates to.
    pub async fn click_and_wait(&self, selector: &str) {
        self.navigating(&format!("the page after clicking `{selector}`"), self.click(selector)).await
    }

    /// Submits a form as its submit button would (running its validation,
    /// unless it has `novalidate`, and its submit handlers) and waits for the
    /// page it navigates to.
    pub async fn submit(&self, form_selector: &str) {
        self.wait_for(form_selector).await;
        let js = format!(
            "(f => {{ if (!f.noValidate && !f.checkValidity()) {{ \
               return Array.from(f.elements).filter(e => e.willValidate && !e.checkValidity()) \
                 .map(e => (e.name || e.id) + ': ' + e.validationMessage).join('; ') || 'invalid'; }} \
               setTimeout(() => f.requestSubmit(), 0); return null; }})(document.querySelector({}))",
            js_str(form_selector)
        );
        let nav = self.start_navigation().await;
        let invalid = self.eval(&js).await;
        if let Some(problems) = invalid.as_str() {
            panic!("`{form_selector}` is not valid, so it would not submit: {problems}\n{}", self.where_am_i().await);
        }
        self.wait_load(nav, &format!("the page after submitting `{form_selector}`")).await;
    }

    /// First-run setup in the page, as the first admin does it: the server's token, a name, an
    /// email (`<name>@example.com`) and a password; ends signed in on the home page.
    pub async fn set_up_admin(&self, token: &str, name: &str, password: &str) {
        self.goto("/").await;
        self.wait_for("main#main[data-page=setup]").await;
        self.fill("form[data-form=setup] [name=token]", token).await;
        self.fill("form[data-form=setup] [name=name]", name).await;
        self.fill("form[data-form=setup] [name=email]", &format!("{name}@example.com")).await;
        self.fill("form[data-form=setup] [name=password]", password).await;
        self.submit("form[data-form=setup]").await;
        self.wait_for("main#main[data-page=home]").await;
    }

    /// Presses a key (`Tab`, `Enter`, `Escape`, `ArrowDown`, a character…) on the focused element.
    pub async fn press(&self, key: &str) {
        let (code, vk, text) = match key {
            "Tab" => ("Tab", 9, None),
            "Enter" => ("Enter", 13, Some("\r")),
            "Escape" => ("Escape", 27, None),
            "Space" | " " => ("Space", 32, Some(" ")),
            "ArrowDown" => ("ArrowDown", 40, None),
            "ArrowUp" => ("ArrowUp", 38, None),
            _ => ("", 0, Some(key)),
        };
        let key_name = if key == "Space" { " " } else { key };
        // A key that types something is a keyDown with its text; others are raw.
        let mut down = json!({"type": "rawKeyDown", "key": key_name, "code": code, "windowsVirtualKeyCode": vk});
        if let Some(t) = text {
            down["type"] = json!("keyDown");
            down["text"] = json!(t);
        }
        self.call("Input.dispatchKeyEvent", down).await;
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key_name, "code": code, "windowsVirtualKeyCode": vk}),
        )
        .await;
    }

    /// A short description of the focused element: `tag#id[name]` and its text.
    pub async fn focused(&self) -> String {
        let js = "(e => e ? e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + \
                  (e.name ? '[name=' + e.name + ']' : '') + ' ' + (e.innerText || e.value || '').trim().slice(0, 40) \
                  : '')(document.activeElement)";
        self.eval(js).await.as_str().unwrap_or_default().to_owned()
    }

    // --- the window --------------------------------------------------------

    /// Emulates a viewport of `width` × `height` CSS pixels (a phone when `mobile`).
    pub async fn set_viewport(&self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    /// Back to the window's own size.
    pub async fn reset_viewport(&self) {
        self.call("Emulation.clearDeviceMetricsOverride", json!({})).await;
    }

    /// How the page's width compares with the viewport's. The viewport is the
    /// root element's `clientWidth`: under mobile emulation `innerWidth`
    /// grows to fit content that sticks out, so it cannot reveal overflow.
    pub async fn horizontal_overflow(&self) -> Overflow {
        let js = "(() => { const w = document.documentElement.clientWidth; \
                  const content = document.documentElement.scrollWidth; \
                  const right = e => { const r = e.getBoundingClientRect(); \
                    return getComputedStyle(e).overflowX === 'visible' ? r.left + Math.max(r.width, e.scrollWidth) : r.right; }; \
                  const culprits = content <= w ? [] : Array.from(document.querySelectorAll('body *')) \
                    .map(e => [e, right(e)]).filter(([e, r]) => r > w + 0.5); \
                  const leaves = culprits.filter(([e]) => !culprits.some(([o]) => o !== e && e.contains(o))) \
                    .sort((a, b) => b[1] - a[1]).slice(0, 5) \
                    .map(([e, r]) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + \
                      (e.className && typeof e.className === 'string' && e.className.trim() ? \
                        '.' + e.className.trim().split(/\\s+/).join('.') : '') + ' right=' + Math.round(r) + \
                      ' ' + JSON.stringify((e.innerText || '').trim().slice(0, 40))); \
                  return {viewport: w, content, culprits: leaves}; })()";
        let v = self.eval(js).await;
        let viewport = v["viewport"].as_i64().unwrap_or(0);
        let content = v["content"].as_i64().unwrap_or(0);
        Overflow {
            viewport,
            content,
            over: (content - viewport).max(0),
            culprits: serde_json::from_value(v["culprits"].clone()).unwrap_or_default(),
        }
    }

    /// Panics when the page is wider than its viewport, or when (at a phone's
    /// `width`) it lays out wider than the phone: a page without
    /// `<meta name=viewport content="width=device-width">` is shrunk to fit.
    pub async fn assert_fits_width(&self, width: i64) {
        let o = self.horizontal_overflow().await;
        if o.viewport != width {
            panic!(
                "the page lays out {} px wide on a {width} px screen (no viewport meta?)\n{}",
                o.viewport,
                self.where_am_i().await
            );
        }
        if o.over > 0 {
            panic!(
                "the page overflows a {} px viewport by {} px; the elements furthest right: {:?}\n{}",
                o.viewport,
                o.over,
                o.culprits,
                self.where_am_i().await
            );
        }
    }

    /// Problems no page should have, as sentences: ids used twice, form
    /// controls without a label, `pattern` attributes that are not valid
    /// (the browser then ignores them, and says so on the console only when
    /// it first validates), visible buttons and links without an
    /// accessible name, images without `alt`.
    pub async fn page_problems(&self) -> Vec<String> {
        let js = r#"(() => {
            const problems = [];
            const desc = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.name ? '[name=' + e.name + ']' : '');
            const seen = {};
            document.querySelectorAll('[id]').forEach(e => { seen[e.id] = (seen[e.id] || 0) + 1; });
            Object.entries(seen).filter(([, n]) => n > 1).forEach(([id, n]) => problems.push(`id ${id} is used ${n} times`));
            document.querySelectorAll('input:not([type=hidden]), select, textarea').forEach(e => {
                if (!(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
                    problems.push(`${desc(e)} has no label`);
            });
            document.querySelectorAll('[pattern]').forEach(e => {
                try { new RegExp('^(?:' + e.getAttribute('pattern') + ')$', 'v'); }
                catch (x) { problems.push(`${desc(e)} has an invalid pattern: ${x.message}`); }
            });
            document.querySelectorAll('button, a[href]').forEach(e => {
                if (!e.getClientRects().length) return;
                const named = (e.innerText || '').trim() || e.getAttribute('aria-label') || e.getAttribute('aria-labelledby')
                    || e.getAttribute('title') || e.querySelector('img[alt]:not([alt=""]), svg title');
                if (!named) problems.push(`${desc(e)} has no accessible name`);
            });
            document.querySelectorAll('img:not([alt])').forEach(e => problems.push(`${desc(e)} has no alt text`));
            return problems;
        })()"#;
        serde_json::from_value(self.eval(js).await).unwrap_or_default()
    }

    // --- artifacts ---------------------------------------------------------

    /// The directory this test's screenshots go to.
    pub fn screenshot_dir(&self) -> PathBuf {
        artifacts_dir().join("screenshots").join(&self.test_name)
    }

    /// Saves a PNG of the whole page as `<screenshot_dir>/<name>.png` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.capture().await.unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        self.save_png(name, &png)
    }

    fn save_png(&self, name: &str, png: &[u8]) -> PathBuf {
        let dir = self.screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn capture(&self) -> Result<Vec<u8>, String> {
        let metrics = self.try_call("Page.getLayoutMetrics", json!({})).await?;
        let r = self.try_call("Page.captureScreenshot", screenshot_params(&metrics)).await?;
        decode_png(&r)
    }

    // --- console and cookies -----------------------------------------------

    /// Errors the page reported so far: uncaught exceptions, `console.error`
    /// and browser log entries of level error (failed resource loads, CSP…).
    pub fn console_errors(&self) -> Vec<ConsoleError> {
        self.shared.lock().unwrap().errors.clone()
    }

    /// Forgets the errors collected so far.
    pub fn clear_console_errors(&self) {
        self.shared.lock().unwrap().errors.clear();
    }

    /// Panics listing the page's errors, if there are any. For local
    /// debugging only, `YATAI_TEST_CONSOLE_IGNORE` (comma-separated
    /// substrings) lets matching errors pass, saying so on stderr.
    pub fn assert_no_console_errors(&self) {
        self.assert_no_console_errors_but(|_| false)
    }

    /// [`Browser::assert_no_console_errors`], letting the errors `expected` accepts pass.
    pub fn assert_no_console_errors_but(&self, expected: impl Fn(&ConsoleError) -> bool) {
        let ignore: Vec<String> = std::env::var("YATAI_TEST_CONSOLE_IGNORE")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let (ignored, errors): (Vec<_>, Vec<_>) = self
            .console_errors()
            .into_iter()
            .filter(|e| !expected(e))
            .partition(|e| ignore.iter().any(|i| e.to_string().contains(i)));
        for e in &ignored {
            eprintln!("console error ignored (YATAI_TEST_CONSOLE_IGNORE): {e}");
        }
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
            panic!("the page reported {} error(s):\n{}", errors.len(), list.join("\n"));
        }
    }

    /// Messages of the JavaScript dialogs the page opened (they are accepted).
    pub fn dialogs(&self) -> Vec<String> {
        self.shared.lock().unwrap().dialogs.clone()
    }

    /// The cookies visible to the page (`Network.getCookies`): objects with
    /// `name`, `value`, `httpOnly`, `secure`, `sameSite`, `path`, `expires`…
    pub async fn cookies(&self) -> Vec<Value> {
        let r = self.call("Network.getCookies", json!({})).await;
        r["cookies"].as_array().cloned().unwrap_or_default()
    }

    /// The cookie called `name`, if the page has one.
    pub async fn cookie(&self, name: &str) -> Option<Value> {
        self.cookies().await.into_iter().find(|c| c["name"] == name)
    }

    /// Removes every cookie (a fresh, signed-out browser).
    pub async fn clear_cookies(&self) {
        self.call("Network.clearBrowserCookies", json!({})).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() && self.diagnose_on_panic && self.shared.lock().unwrap().gone.is_none() {
            let t = Duration::from_secs(10);
            let shot = self
                .call_blocking("Page.getLayoutMetrics", json!({}), t)
                .and_then(|m| self.call_blocking("Page.captureScreenshot", screenshot_params(&m), t))
                .and_then(|r| decode_png(&r));
            let url = self
                .call_blocking("Runtime.evaluate", json!({"expression": "location.href", "returnByValue": true}), t)
                .map(|r| r["result"]["value"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default();
            eprintln!("---- browser at failure ----\n  page: {url}");
            match shot {
                Ok(png) => eprintln!("  screenshot: {}", self.save_png("failure", &png).display()),
                Err(e) => eprintln!("  no screenshot: {e}"),
            }
            for e in self.console_errors() {
                eprintln!("  console: {e}");
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = kill_group(&mut child);
        }
        if let Some(t) = self.io_thread.take() {
            let _ = t.join();
        }
        if let Some(profile) = self.profile.take() {
            let _ = std::fs::remove_dir_all(profile.path());
            drop(profile);
        }
    }
}

/// Kills the process group led by `child` and waits until it is empty.
fn kill_group(child: &mut Child) -> std::io::Result<()> {
    let pgid = child.id() as i32;
    // SAFETY: signals our own child's process group (it was started with process_group(0)).
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    // SAFETY: signal 0 only checks whether the group still has members.
    while unsafe { libc::killpg(pgid, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn screenshot_params(metrics: &Value) -> Value {
    let size = &metrics["cssContentSize"];
    let width = size["width"].as_f64().unwrap_or(1280.0).max(1.0);
    // Very long pages are cut: a screenshot is for a human to look at.
    let height = size["height"].as_f64().unwrap_or(900.0).clamp(1.0, 8000.0);
    json!({
        "format": "png",
        "captureBeyondViewport": true,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    })
}

fn decode_png(r: &Value) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let data = r["data"].as_str().ok_or("no screenshot data")?;
    base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| e.to_string())
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `s` as a JavaScript string literal.
pub fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn snippet(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max { format!("{}…", flat.chars().take(max).collect::<String>()) } else { flat }
}

type Connected = (mpsc::UnboundedSender<Call>, Arc<Mutex<Shared>>, watch::Receiver<u64>, std::thread::JoinHandle<()>);

/// Opens the DevTools websocket and starts the thread that speaks over it.
async fn connect(ws_url: &str) -> Result<Connected, String> {
    let (calls_tx, calls_rx) = mpsc::unbounded_channel::<Call>();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (loads_tx, loads_rx) = watch::channel(0u64);
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let url = ws_url.to_owned();
    let thread_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("cdp".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .max_message_size(Some(512 << 20))
                    .max_frame_size(Some(512 << 20));
                let ws = match tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true).await {
                    Ok((ws, _)) => ws,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                io_loop(ws, calls_rx, thread_shared, loads_tx).await;
            });
        })
        .unwrap();
    match ready_rx.await {
        Ok(Ok(())) => Ok((calls_tx, shared, loads_rx, thread)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the DevTools thread ended".into()),
    }
}

async fn io_loop<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    mut calls: mpsc::UnboundedReceiver<Call>,
    shared: Arc<Mutex<Shared>>,
    loads: watch::Sender<u64>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut next_id: u64 = 1;
    let mut pending: HashMap<u64, (String, Reply)> = HashMap::new();
    let gone = loop {
        tokio::select! {
            call = calls.recv() => {
                let Some(call) = call else { break "the browser was closed".to_owned() };
                let id = next_id;
                next_id += 1;
                let mut msg = json!({"id": id, "method": call.method, "params": call.params});
                if let Some(s) = call.session {
                    msg["sessionId"] = json!(s);
                }
                pending.insert(id, (call.method, call.reply));
                if let Err(e) = ws.send(Message::text(msg.to_string())).await {
                    break format!("cannot send to the browser: {e}");
                }
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => break "the browser closed the DevTools connection".to_owned(),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break format!("DevTools connection error: {e}"),
                };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    if let Some((method, reply)) = pending.remove(&id) {
                        let r = match v.get("error") {
                            Some(e) => Err(format!("{method}: {}", e["message"].as_str().unwrap_or(&e.to_string()))),
                            None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                        };
                        reply(r);
                    }
                    continue;
                }
                let method = v["method"].as_str().unwrap_or_default();
                let params = &v["params"];
                if method.starts_with("Page.") {
                    let detail = params["name"].as_str().or(params["frame"]["url"].as_str()).or(params["url"].as_str());
                    let mut sh = shared.lock().unwrap();
                    if sh.recent.len() >= 20 {
                        sh.recent.pop_front();
                    }
                    sh.recent.push_back(format!("{method} {}", detail.unwrap_or_default()));
                }
                match method {
                    "Page.loadEventFired" => loads.send_modify(|n| *n += 1),
                    "Page.javascriptDialogOpening" => {
                        shared.lock().unwrap().dialogs.push(params["message"].as_str().unwrap_or_default().to_owned());
                        let mut msg = json!({"id": next_id, "method": "Page.handleJavaScriptDialog", "params": {"accept": true}});
                        next_id += 1;
                        if let Some(s) = v.get("sessionId") {
                            msg["sessionId"] = s.clone();
                        }
                        let _ = ws.send(Message::text(msg.to_string())).await;
                    }
                    "Inspector.targetCrashed" => {
                        shared.lock().unwrap().gone = Some("the page crashed".into());
                    }
                    _ => {
                        if let Some(e) = console_error(method, params) {
                            shared.lock().unwrap().errors.push(e);
                        }
                    }
                }
            }
        }
    };
    shared.lock().unwrap().gone.get_or_insert(gone.clone());
    for (_, (method, reply)) in pending.drain() {
        reply(Err(format!("{method}: {gone}")));
    }
}

/// The error an event reports, if it is one.
fn console_error(method: &str, params: &Value) -> Option<ConsoleError> {
    match method {
        "Runtime.exceptionThrown" => {
            let d = &params["exceptionDetails"];
            let text = d["exception"]["description"].as_str().or(d["text"].as_str()).unwrap_or("exception").to_owned();
            let url = d["url"].as_str().filter(|u| !u.is_empty()).map(|u| {
                format!(
                    "{u}:{}:{}",
                    d["lineNumber"].as_i64().unwrap_or(0) + 1,
                    d["columnNumber"].as_i64().unwrap_or(0) + 1
                )
            });
            Some(ConsoleError { kind: "exception".into(), text, url })
        }
        "Runtime.consoleAPICalled" if matches!(params["type"].as_str(), Some("error" | "assert")) => {
            let args = params["args"].as_array().cloned().unwrap_or_default();
            let text = args
                .iter()
                .map(|a| match a.get("value") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => a["description"].as_str().unwrap_or("?").to_owned(),
                })
                .collect::<Vec<_>>()
                .join(" ");
            let frame = &params["stackTrace"]["callFrames"][0];
            let url = frame["url"]
                .as_str()
                .filter(|u| !u.is_empty())
                .map(|u| format!("{u}:{}", frame["lineNumber"].as_i64().unwrap_or(0) + 1));
            Some(ConsoleError { kind: "console".into(), text, url })
        }
        "Log.entryAdded" if params["entry"]["level"] == "error" => {
            let e = &params["entry"];
            Some(ConsoleError {
                kind: format!("log:{}", e["source"].as_str().unwrap_or("other")),
                text: e["text"].as_str().unwrap_or_default().to_owned(),
                url: e["url"].as_str().filter(|u| !u.is_empty()).map(str::to_owned),
            })
        }
        _ => None,
    }
}

/// Whether a path exists and is a non-empty PNG file.
pub fn is_png(path: &Path) -> bool {
    std::fs::read(path).map(|b| b.starts_with(b"\x89PNG\r\n\x1a\n")).unwrap_or(false)
}
