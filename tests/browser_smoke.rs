//! The browser driver (tests/support/browser.rs) against a real headless
//! Chromium: the API documentation page of a real `yatai serve`, and pages
//! made up on the spot (`data:` URLs) that show the driver notices what it
//! must: JavaScript errors, failed loads, overflow at phone width, a process
//! left behind.

mod support;

#[path = "support/browser.rs"]
mod browser;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use browser::Browser;
use futures_util::FutureExt;
use support::*;

/// A `data:` URL of an HTML document.
fn page(html: &str) -> String {
    let mut out = String::from("data:text/html;charset=utf-8,");
    for b in html.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The panic message of a future that is expected to panic.
async fn panic_message(f: impl Future<Output = ()>) -> String {
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(()) => panic!("expected a panic"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    }
}

#[tokio::test]
async fn swagger_ui_renders_offline_without_console_errors() {
    let server = Server::start(Backend::SqliteLocal);
    let b = Browser::launch().await.with_base(&server.url);
    b.goto("/api/docs/").await;
    // Swagger UI renders the operations from /api/openapi.json in the page.
    b.wait_for(".opblock").await;
    b.wait_for_text(".opblock-summary-path", "/api/v1/bento_repositories").await;
    assert!(b.count(".opblock").await >= 10, "only {} operations listed", b.count(".opblock").await);
    let title = b.text(".info .title").await;
    assert!(!title.is_empty(), "no API title");
    assert!(b.current_url().await.starts_with(&format!("{}/api/docs", server.url)));

    // Expanding an operation shows its details.
    b.click(".opblock .opblock-summary").await;
    b.wait_for(".opblock.is-open .opblock-body").await;

    b.assert_no_console_errors();
    let shot = b.screenshot("api-docs").await;
    assert!(browser::is_png(&shot), "{} is not a PNG", shot.display());
    assert!(shot.starts_with(browser::artifacts_dir().join("screenshots")), "{}", shot.display());
}

#[tokio::test]
async fn javascript_errors_and_failed_loads_are_caught() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let b = Browser::launch().await;
    b.goto(&page(&format!(
        "<!doctype html><title>broken</title><p id=p>hello</p>\
         <script>console.log('all is well'); console.warn('only a warning');</script>\
         <script>console.error('deliberate console error');</script>\
         <script>noSuchFunction();</script>\
         <img src='http://127.0.0.1:{closed}/missing.png'>"
    )))
    .await;
    assert_eq!(b.text("#p").await, "hello");
    // The image's failure arrives after the load event (connection refused).
    b.wait_until("document.images[0].complete").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.console_errors().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors = b.console_errors();
    let all = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    assert!(errors.iter().any(|e| e.kind == "exception" && e.text.contains("noSuchFunction")), "{all}");
    assert!(errors.iter().any(|e| e.kind == "console" && e.text.contains("deliberate console error")), "{all}");
    assert!(errors.iter().any(|e| e.kind == "log:network" && e.text.contains("Failed to load resource")), "{all}");
    assert!(!all.contains("all is well") && !all.contains("only a warning"), "{all}");

    let message = panic_message(async { b.assert_no_console_errors() }).await;
    assert!(message.contains("noSuchFunction"), "{message}");

    // An error thrown later, from an event handler, is caught too.
    b.clear_console_errors();
    b.eval("setTimeout(() => { throw new TypeError('late failure') }, 0); true").await;
    b.wait_until("true").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.console_errors().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors = b.console_errors();
    assert!(errors.iter().any(|e| e.text.contains("TypeError: late failure")), "{errors:?}");
}

#[tokio::test]
async fn content_security_policy_violations_are_caught() {
    let b = Browser::launch().await;
    b.goto(&page(
        "<!doctype html><meta http-equiv=Content-Security-Policy content=\"script-src 'none'\">\
         <p id=p>strict</p><script>document.title = 'ran'</script>",
    ))
    .await;
    assert_eq!(b.text("#p").await, "strict");
    assert_ne!(b.eval("document.title").await, "ran");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.console_errors().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors = b.console_errors();
    assert!(errors.iter().any(|e| e.text.contains("Content Security Policy")), "{errors:#?}");
}

#[tokio::test]
async fn the_browser_reaches_nothing_but_loopback() {
    let b = Browser::launch().await;
    for url in ["http://example.com/", "https://pypi.org/", "http://1.1.1.1/", "http://[2606:4700:4700::1111]/"] {
        let r = b.call("Page.navigate", serde_json::json!({"url": url})).await;
        let error = r["errorText"].as_str().unwrap_or_default();
        assert!(
            matches!(error, "net::ERR_PROXY_CONNECTION_FAILED" | "net::ERR_NAME_NOT_RESOLVED"),
            "{url} was not blocked as it should be: {r}"
        );
    }
    // Loopback works, by address and by name.
    let server = Server::start(Backend::SqliteLocal);
    b.goto(&format!("{}/api/docs/", server.url)).await;
    b.wait_for(".opblock").await;
    b.goto(&format!("{}/api/docs/", server.url.replace("127.0.0.1", "localhost"))).await;
    b.wait_for(".opblock").await;
}

#[tokio::test]
async fn a_wait_that_times_out_says_what_it_awaited_and_where() {
    let mut b = Browser::launch().await;
    b.timeout = Duration::from_millis(300);
    b.goto(&page("<h1>Nothing here</h1><p>but this text</p>")).await;
    let message = panic_message(b.wait_for("[data-testid=row]")).await;
    assert!(message.contains("`[data-testid=row]`"), "{message}");
    assert!(message.contains("page: data:text/html"), "{message}");
    assert!(message.contains("Nothing here but this text"), "{message}");

    let message = panic_message(b.wait_for_text("h1", "Something")).await;
    assert!(message.contains("`h1` containing \"Something\""), "{message}");
    let message = panic_message(b.click("#absent")).await;
    assert!(message.contains("`#absent` to be visible and clickable"), "{message}");
    let message = panic_message(async {
        b.eval("null.x").await;
    })
    .await;
    assert!(message.contains("TypeError"), "{message}");
}

#[tokio::test]
async fn forms_are_filled_and_submitted_with_real_clicks() {
    let server = Server::start(Backend::SqliteLocal);
    let b = Browser::launch().await;
    // The form navigates to the real server, so the driver sees a new document load.
    let action = format!("{}/api/docs/", server.url);
    b.goto(&page(&format!(
        "<!doctype html><form data-form=search method=get action='{action}'>\
         <label for=q>Query</label><input id=q name=q required>\
         <label for=kind>Kind</label><select id=kind name=kind><option value=a>A</option><option value=b>B</option></select>\
         <button type=submit>Go</button></form>\
         <button id=count onclick=\"this.textContent = Number(this.textContent) + 1\">0</button>"
    )))
    .await;

    // Real mouse clicks reach the handler.
    b.click("#count").await;
    b.click("#count").await;
    b.wait_for_text("#count", "2").await;

    // An invalid form is reported, not submitted.
    let message = panic_message(b.submit("form[data-form=search]")).await;
    assert!(message.contains("is not valid") && message.contains("q:"), "{message}");

    b.fill("#q", "iris classifier").await;
    b.select("#kind", "b").await;
    assert_eq!(b.prop("#kind", "value").await, "b");
    assert_eq!(b.attr("#q", "name").await.as_deref(), Some("q"));
    b.submit("form[data-form=search]").await;
    let url = b.current_url().await;
    assert!(url.starts_with(&action) && url.contains("q=iris+classifier") && url.contains("kind=b"), "{url}");
    b.wait_for(".opblock").await;

    // Keyboard: Tab moves the focus, Enter on a link follows it.
    b.goto(&page(&format!("<a id=first href='{action}?via=keyboard'>docs</a><input id=other>"))).await;
    b.press("Tab").await;
    assert!(b.focused().await.starts_with("a#first"), "{}", b.focused().await);
    let before = b.current_url().await;
    b.press("Enter").await;
    b.wait_until("location.href.includes('via=keyboard')").await;
    assert_ne!(b.current_url().await, before);
}

#[tokio::test]
async fn phone_width_overflow_is_measured() {
    let b = Browser::launch().await;
    b.set_viewport(375, 812, true).await;
    let head = "<!doctype html><meta name=viewport content='width=device-width, initial-scale=1'><body style=margin:0>";
    b.goto(&page(&format!("{head}<p>fits</p>"))).await;
    assert_eq!(b.eval("window.innerWidth").await, 375);
    assert_eq!(b.horizontal_overflow().await.over, 0);
    b.assert_fits_width(375).await;
    b.screenshot("fits").await;

    b.goto(&page(&format!("{head}<table id=wide style='width:900px'><tr><td>too wide</td></tr></table>"))).await;
    let o = b.horizontal_overflow().await;
    // (Mobile layout may round the content up by a pixel.)
    assert!(o.viewport == 375 && (900..=901).contains(&o.content) && o.over == o.content - 375, "{o:?}");
    // The innermost elements that stick out are named, with their text.
    assert!(o.culprits.iter().any(|c| c.starts_with("td right=") && c.ends_with("\"too wide\"")), "{o:?}");
    let message = panic_message(b.assert_fits_width(375)).await;
    assert!(message.contains("overflows a 375 px viewport by 52"), "{message}");

    // Without a viewport meta, a phone lays the page out 980 px wide and shrinks it.
    b.goto(&page("<!doctype html><p>desktop only</p>")).await;
    let message = panic_message(b.assert_fits_width(375)).await;
    assert!(message.contains("lays out 980 px wide on a 375 px screen"), "{message}");

    b.reset_viewport().await;
    assert_eq!(b.eval("window.innerWidth").await, 1280);
}

#[tokio::test]
async fn markup_problems_are_listed() {
    let b = Browser::launch().await;
    b.goto(&page(
        "<!doctype html><main><label for=ok>Fine</label><input id=ok name=ok pattern='[a-z0-9\\-]+'>\
         <input name=bare><p id=twice></p><p id=twice></p>\
         <input aria-label=Named name=named pattern='[-a-z]+'>\
         <button></button><button aria-label=Close></button><a href='/x'><svg><title>Home</title></svg></a>\
         <img src='data:,'></main>",
    ))
    .await;
    let problems = b.page_problems().await;
    assert_eq!(problems.len(), 5, "{problems:#?}");
    let all = problems.join("\n");
    for expected in [
        "input[name=bare] has no label",
        "id twice is used 2 times",
        "input[name=named] has an invalid pattern",
        "button has no accessible name",
        "img has no alt text",
    ] {
        assert!(all.contains(expected), "{expected:?} not in:\n{all}");
    }
    b.goto(&page("<!doctype html><label>Wrapped <input name=w></label><a href='/'>Home</a>")).await;
    assert_eq!(b.page_problems().await, Vec::<String>::new());
}

#[tokio::test]
async fn cookies_can_be_inspected() {
    let server = Server::start(Backend::SqliteLocal);
    let b = Browser::launch().await.with_base(&server.url);
    b.goto("/api/docs/").await;
    b.eval("document.cookie = 'probe=1; SameSite=Strict; path=/'").await;
    let probe = b.cookie("probe").await.expect("the cookie set by the page");
    assert_eq!(probe["value"], "1");
    assert_eq!(probe["sameSite"], "Strict");
    assert_eq!(probe["httpOnly"], false);
    b.clear_cookies().await;
    assert!(b.cookie("probe").await.is_none());
}

#[tokio::test]
async fn the_browser_leaves_nothing_behind() {
    let b = Browser::launch().await;
    b.goto(&page("<p>bye</p>")).await;
    let pid = b.pid().unwrap();
    let profile = b.profile_dir().unwrap();
    let needle = profile.display().to_string();
    let ours = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                    && pid_alive(*pid)
            })
            .collect()
    };
    // The browser, its zygotes, GPU/network utilities and the renderer.
    assert!(ours().len() >= 2, "{:?}", ours());
    drop(b);
    assert!(!pid_alive(pid));
    assert_eq!(ours(), Vec::<u32>::new(), "Chromium processes outlived the Browser");
    assert!(!profile.exists(), "{} was not removed", profile.display());
}
