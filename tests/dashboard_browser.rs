//! The dashboard in a real browser (headless Chromium, driven over the
//! DevTools protocol by tests/support/browser.rs): the whole path of a new
//! installation, from first-run setup to a terminated deployment, with the
//! bento pushed by the real bentoml CLI using a token created in the page.
//!
//! Every step asserts on the DOM, every page must be free of console errors
//! (exceptions, `console.error`, failed loads), and each main page is saved as
//! a screenshot (see docs/testbed.md) and checked at phone width.

mod support;

#[path = "support/browser.rs"]
mod browser;

use std::time::Duration;

use browser::{Browser, js_str};
use support::*;

const ADMIN: &str = "ada";
const EMAIL: &str = "ada@example.com";
const PASSWORD: &str = "correct horse battery";
/// A page that takes longer than this to load is reported.
const SLOW_NAVIGATION: Duration = Duration::from_secs(5);
/// How long a (re)deployment may take to turn running.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);
/// The first deployment on a machine also builds its Python environment
/// (downloaded with uv, then cached under /var/cache/yatai-rs/test-envs).
const FIRST_DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);

/// Waits until the page shown is `page` (`<main id=main data-page=…>`).
async fn on_page(b: &Browser, page: &str) {
    b.wait_for(&format!("main#main[data-page={page}]")).await;
}

/// What the flow found wrong without stopping: layout and markup problems,
/// asserted at the end so that one of them does not hide the rest.
static PROBLEMS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Notes the [`Browser::page_problems`] of the page shown.
async fn check_page(b: &Browser, page: &str) {
    for p in b.page_problems().await {
        let line = format!("{page}: {p}");
        let mut all = PROBLEMS.lock().unwrap();
        if !all.contains(&line) {
            all.push(line);
        }
    }
}

/// Opens `path`, checks it is `page` without console errors or markup
/// problems, and saves a screenshot.
async fn visit(b: &Browser, path: &str, page: &str) {
    b.goto(path).await;
    on_page(b, page).await;
    b.assert_no_console_errors();
    check_page(b, page).await;
    b.screenshot(page).await;
}

/// Clicks and expects a console error-free `page` next.
async fn click_to(b: &Browser, selector: &str, page: &str) {
    b.click_and_wait(selector).await;
    on_page(b, page).await;
    b.assert_no_console_errors();
}

/// Submits a form and expects `page` next.
async fn submit_to(b: &Browser, form: &str, page: &str) {
    b.submit(&format!("form[data-form={form}]")).await;
    on_page(b, page).await;
}

/// The text of the field error shown for `field`.
async fn field_error(b: &Browser, field: &str) -> String {
    b.text(&format!(".field-error[data-error-for={field}]")).await
}

/// Submits a form that the server answers with its errors (422 or 401).
/// Chromium reports a document loaded with an error status as a failed
/// resource load; that one entry is expected, anything else is not.
async fn submit_expecting_errors(b: &Browser, form: &str, page: &str, status: u16) {
    b.assert_no_console_errors();
    submit_to(b, form, page).await;
    let expected = format!("the server responded with a status of {status}");
    b.assert_no_console_errors_but(|e| e.kind == "log:network" && e.text.contains(&expected));
    b.clear_console_errors();
}

/// `[data-testid=row][data-name=NAME]`
fn row(name: &str) -> String {
    format!("[data-testid=row][data-name={}]", js_str(name))
}

fn revision(n: usize) -> String {
    format!("[data-testid=revision][data-revision=\"{n}\"]")
}

/// Waits for the detail page's live status badge to read `status`; fails
/// at once, with the reason and the logs, if it reads `failed` instead.
async fn wait_status(b: &Browser, status: &str, timeout: Duration) {
    let js = format!(
        "(s => s === {} || s === 'failed' ? s : null)(document.querySelector('[data-testid=status]').textContent.trim())",
        js_str(status)
    );
    let seen = b.wait_until_for(&js, &format!("the status to turn {status}"), timeout).await;
    if seen != status {
        let reason = b.text("[data-live-reason]").await;
        let logs = b.text("[data-testid=logs]").await;
        panic!("the deployment failed instead of turning {status}: {reason}\nlogs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_first_run_to_a_terminated_deployment() {
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&["--janitor-interval", "2s"]));
    let mut b = Browser::launch().await.with_base(&server.url);
    // Longer than the dashboard's 15 s SSE keep-alive, so that a navigation
    // stalled behind event streams is measured (below) rather than fatal.
    b.timeout = Duration::from_secs(90);

    // ---- first-run setup: the setup token is the server's first API token ----
    b.goto("/").await;
    on_page(&b, "setup").await;
    assert!(b.current_url().await.ends_with("/setup"), "{}", b.current_url().await);
    for field in ["token", "name", "email", "password"] {
        // Every control is labelled.
        assert_eq!(b.count(&format!("form[data-form=setup] label[for={field}]")).await, 1, "label for {field}");
        assert_eq!(b.attr(&format!("#{field}"), "name").await.as_deref(), Some(field));
    }
    b.assert_no_console_errors();
    check_page(&b, "setup").await;
    b.screenshot("setup").await;

    // A wrong token is refused beside its field, and what was typed stays.
    b.fill("form[data-form=setup] [name=token]", "not-the-token").await;
    b.fill("form[data-form=setup] [name=name]", ADMIN).await;
    b.fill("form[data-form=setup] [name=email]", EMAIL).await;
    b.fill("form[data-form=setup] [name=password]", PASSWORD).await;
    submit_expecting_errors(&b, "setup", "setup", 422).await;
    assert!(field_error(&b, "token").await.contains("not the setup token"), "{}", field_error(&b, "token").await);
    assert_eq!(b.prop("[name=name]", "value").await, ADMIN);
    b.screenshot("setup-error").await;

    b.fill("form[data-form=setup] [name=token]", &server.token).await;
    b.fill("form[data-form=setup] [name=password]", PASSWORD).await;
    submit_to(&b, "setup", "home").await;
    b.assert_no_console_errors();

    // The session cookie is out of the page's reach and not sent cross-site.
    let session = b.cookie("yatai_session").await.expect("a session cookie after setup");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert!(matches!(session["sameSite"].as_str(), Some("Lax" | "Strict")), "{session}");
    assert_eq!(b.eval("document.cookie.includes('yatai_session')").await, false);

    // ---- sign out, then sign in by email ----
    b.submit("form[data-form=logout]").await;
    on_page(&b, "login").await;
    assert!(b.cookie("yatai_session").await.is_none(), "the session cookie outlived sign-out");
    b.goto("/bentos").await;
    on_page(&b, "login").await;
    b.assert_no_console_errors();
    check_page(&b, "login").await;
    b.screenshot("login").await;

    b.fill("form[data-form=login] [name=login]", EMAIL).await;
    b.fill("form[data-form=login] [name=password]", "wrong password").await;
    submit_expecting_errors(&b, "login", "login", 401).await;
    assert!(field_error(&b, "form").await.contains("Wrong"), "{}", field_error(&b, "form").await);

    b.fill("form[data-form=login] [name=login]", EMAIL).await;
    b.fill("form[data-form=login] [name=password]", PASSWORD).await;
    submit_to(&b, "login", "bentos").await;
    b.assert_no_console_errors();
    // Nothing pushed yet: the empty state says what to do.
    assert!(b.text("main").await.to_lowercase().contains("push"), "{}", b.text("main").await);
    b.screenshot("bentos-empty").await;
    visit(&b, "/models", "models").await;
    assert!(b.text("main").await.to_lowercase().contains("push"), "{}", b.text("main").await);
    visit(&b, "/deployments", "deployments").await;
    b.wait_for("main a[href=\"/deployments/new\"]").await;
    assert_eq!(b.count("[data-testid=row]").await, 0);
    b.screenshot("deployments-empty").await;

    // Keyboard: the first Tab reaches the skip link, which leads to the content.
    b.press("Tab").await;
    let focused = b.focused().await;
    assert!(focused.starts_with("a") && focused.contains("Skip to content"), "first Tab focused {focused:?}");
    b.press("Enter").await;
    b.wait_until("location.hash === '#main'").await;

    // ---- an API token, created in the page ----
    visit(&b, "/settings/tokens", "tokens").await;
    b.fill("form[data-form=token-create] [name=name]", "ci-push").await;
    b.fill("form[data-form=token-create] [name=expires_in_days]", "30").await;
    assert_eq!(b.prop("form[data-form=token-create] [name=scopes][value=api]", "checked").await, true);
    submit_to(&b, "token-create", "tokens").await;
    b.assert_no_console_errors();
    let token = b.text("[data-testid=new-token]").await;
    assert!(token.starts_with("yatai_") && token.len() > 20, "{token:?}");
    let login_cmd = b.text("#login-cmd").await;
    assert!(login_cmd.contains(&format!("bentoml cloud login --api-token {token} --endpoint ")), "{login_cmd}");
    b.wait_for(&row("ci-push")).await;
    check_page(&b, "tokens-created").await;
    b.screenshot("tokens-created").await;
    // Shown once: a reload does not show it again.
    b.goto("/settings/tokens").await;
    assert_eq!(b.count("[data-testid=new-token]").await, 0);
    assert!(!b.html().await.contains(&token), "the token's secret is on the page again");

    // ---- push a bento with the bentoml CLI, using that token ----
    let iris = iris_home();
    let cli = Bentoml::with_home_from(&server.url, &token, iris.home.path());
    cli.ok(&["push", &iris.bento]);
    cli.ok(&["push", &iris.bento_v2]);
    let (repo, v1) = iris.bento.split_once(':').unwrap();
    let v2 = iris.bento_v2.split_once(':').unwrap().1;

    // The page says the token was used (last-used times are written in
    // batches, every janitor interval).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        b.reload().await;
        let used = b.text(&row("ci-push")).await;
        if !used.contains("never") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the token is not marked as used: {used}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // ---- the bento is listed; its repository and version pages ----
    visit(&b, "/bentos", "bentos").await;
    b.wait_for(&row(repo)).await;
    click_to(&b, &format!("{} a[href=\"/bentos/{repo}\"]", row(repo)), "bento-repo").await;
    b.wait_for(&row(v1)).await;
    b.wait_for(&row(v2)).await;
    check_page(&b, "bento-repo").await;
    b.screenshot("bento-repo").await;
    click_to(&b, &format!("{} a", row(v1)), "bento-version").await;
    assert_eq!(b.text("[data-testid=version]").await, v1);
    assert_eq!(b.text("[data-testid=upload-status]").await, "success");
    assert_eq!(b.text("[data-testid=creator]").await, ADMIN);
    // Its models are linked, its APIs and requirements shown.
    for model in &iris.models {
        let (name, version) = model.split_once(':').unwrap();
        b.wait_for(&format!("[data-testid=models] a[href=\"/models/{name}/{version}\"]")).await;
    }
    b.wait_for_text("[data-testid=api]", "classify").await;
    b.wait_for_text("main", &format!("bentoml pull {repo}:{v1}")).await;
    check_page(&b, "bento-version").await;
    b.screenshot("bento-version").await;

    // ---- the deployment form's version picker follows the chosen repository ----
    visit(&b, "/deployments/new", "deployment-new").await;
    b.select("[name=bento_repository]", repo).await;
    for v in [v1, v2] {
        b.wait_for(&format!("select[name=bento_version] option[value={}]", js_str(v))).await;
    }
    b.assert_no_console_errors();
    b.goto(&format!("/bentos/{repo}/{v1}")).await;
    on_page(&b, "bento-version").await;

    // ---- deploy it from the form ----
    click_to(&b, "a[href^=\"/deployments/new?\"]", "deployment-new").await;
    assert_eq!(b.prop("[name=bento_repository]", "value").await, repo);
    assert_eq!(b.prop("[name=bento_version]", "value").await, v1);
    for field in ["name", "bento_repository", "bento_version", "cluster", "min_replicas", "max_replicas", "envs"] {
        assert_eq!(b.count(&format!("form[data-form=deployment] label[for={field}]")).await, 1, "label for {field}");
    }
    check_page(&b, "deployment-new").await;
    b.screenshot("deployment-new").await;
    // Mistakes are shown beside their fields.
    b.fill("[name=name]", "Not A Name").await;
    b.fill("[name=max_replicas]", "0").await;
    b.fill("[name=envs]", "NOT AN ENV").await;
    submit_expecting_errors(&b, "deployment", "deployment-new", 422).await;
    assert!(!field_error(&b, "max_replicas").await.is_empty());
    assert!(field_error(&b, "envs").await.contains("KEY=VALUE"), "{}", field_error(&b, "envs").await);
    b.screenshot("deployment-new-errors").await;
    // (The name is checked once the rest is valid.)
    b.fill("[name=max_replicas]", "1").await;
    b.fill("[name=envs]", "IRIS_VARIANT=one").await;
    submit_expecting_errors(&b, "deployment", "deployment-new", 422).await;
    assert!(!field_error(&b, "name").await.is_empty(), "{}", b.text("main").await);
    assert_eq!(b.prop("[name=envs]", "value").await, "IRIS_VARIANT=one");

    b.fill("[name=name]", "iris-web").await;
    b.select("[name=bento_version]", v1).await;
    b.fill("[name=min_replicas]", "1").await;
    submit_to(&b, "deployment", "deployment").await;
    assert!(b.current_url().await.ends_with("/deployments/iris-web"), "{}", b.current_url().await);
    b.assert_no_console_errors();

    // ---- watch it turn running (the badge updates live) ----
    wait_status(&b, "running", FIRST_DEPLOY_TIMEOUT).await;
    b.wait_for("[data-testid=replica]").await;
    assert!(b.text("[data-testid=replica]").await.contains("ready"), "{}", b.text("[data-testid=replica]").await);
    assert_eq!(b.count("[data-testid=revision]").await, 1);
    let url = b.attr("[data-testid=url]", "href").await.expect("the deployment's URL");

    // ---- its logs, live: a request made now shows up in the viewer ----
    b.wait_until("document.querySelector('[data-testid=logs]').innerText.trim().length > 0").await;
    let ep = Http { base: url.trim_end_matches('/').to_owned(), token: None };
    let answer = ep.post("/about", &serde_json::json!({}));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["variant"], "one");
    b.wait_for_text("[data-testid=logs]", "/about").await;
    // The request-rate chart follows the traffic (sampled every few seconds, pushed live).
    for _ in 0..20 {
        assert_eq!(ep.post("/about", &serde_json::json!({})).status, 200);
    }
    b.wait_until_for(
        "parseFloat(document.querySelector('#chart-rps [data-value]').textContent) > 0",
        "the request-rate chart to show the requests",
        Duration::from_secs(45),
    )
    .await;
    b.assert_no_console_errors();
    check_page(&b, "deployment-running").await;
    b.screenshot("deployment-running").await;

    // ---- update: a second revision, with the other bento version ----
    click_to(&b, "a[href=\"/deployments/iris-web/edit\"]", "deployment-edit").await;
    assert_eq!(b.prop("[name=envs]", "value").await.as_str().map(str::trim), Some("IRIS_VARIANT=one"));
    b.select("[name=bento_version]", v2).await;
    b.fill("[name=envs]", "IRIS_VARIANT=two").await;
    check_page(&b, "deployment-edit").await;
    b.screenshot("deployment-edit").await;
    submit_to(&b, "deployment", "deployment").await;
    b.assert_no_console_errors();
    b.wait_for(&revision(2)).await;
    assert_eq!(b.count("[data-testid=revision]").await, 2);
    assert_eq!(b.attr(&revision(2), "data-status").await.as_deref(), Some("active"));
    // The diff between the two revisions shows what changed.
    b.wait_for_text("[data-testid=diff]", "IRIS_VARIANT").await;
    wait_status(&b, "running", DEPLOY_TIMEOUT).await;
    let variant = || async { ep.post("/about", &serde_json::json!({})).json()["variant"].clone() };
    wait_for_async("the second revision to answer", DEPLOY_TIMEOUT, || async { variant().await == "two" }).await;

    // ---- roll back to revision 1 with one click ----
    click_to(&b, &format!("{} [data-action=rollback]", revision(1)), "deployment").await;
    b.wait_for(&revision(3)).await;
    assert_eq!(b.attr(&revision(3), "data-status").await.as_deref(), Some("active"));
    assert!(b.text(&revision(3)).await.contains("rollback to r1"), "{}", b.text(&revision(3)).await);
    assert!(b.text(&revision(3)).await.contains(v1), "{}", b.text(&revision(3)).await);
    wait_status(&b, "running", DEPLOY_TIMEOUT).await;
    wait_for_async("the rolled-back revision to answer", DEPLOY_TIMEOUT, || async { variant().await == "one" }).await;
    b.assert_no_console_errors();
    b.screenshot("deployment-rolled-back").await;

    // Any two revisions compare: r2 against r3 (the rollback to r1) undoes the update.
    b.select("form.toolbar select[name=a]", "2").await;
    b.select("form.toolbar select[name=b]", "3").await;
    b.submit("form.toolbar").await;
    on_page(&b, "deployment").await;
    assert!(b.current_url().await.contains("a=2&b=3"), "{}", b.current_url().await);
    b.wait_for_text("[data-testid=diff] .del", &format!("bento: {repo}:{v2}")).await;
    b.wait_for_text("[data-testid=diff] .add", &format!("bento: {repo}:{v1}")).await;
    b.wait_for_text("[data-testid=diff] .del", "\"two\"").await;
    b.wait_for_text("[data-testid=diff] .add", "\"one\"").await;
    b.assert_no_console_errors();
    b.screenshot("deployment-diff").await;

    // ---- the lists show it ----
    visit(&b, "/deployments", "deployments").await;
    b.wait_for(&row("iris-web")).await;
    assert!(b.text(&row("iris-web")).await.contains("running"), "{}", b.text(&row("iris-web")).await);
    visit(&b, "/", "home").await;
    b.wait_for_text("main", "iris-web").await;
    visit(&b, "/events", "events").await;
    b.wait_for_text("main", "iris-web").await;

    // ---- the other main pages, and all of them at phone width ----
    let (repo_path, version_path) = (format!("/bentos/{repo}"), format!("/bentos/{repo}/{v1}"));
    let pages = [
        ("/", "home"),
        ("/models", "models"),
        ("/bentos", "bentos"),
        (repo_path.as_str(), "bento-repo"),
        (version_path.as_str(), "bento-version"),
        ("/deployments", "deployments"),
        ("/deployments/new", "deployment-new"),
        ("/deployments/iris-web", "deployment"),
        ("/settings/tokens", "tokens"),
        ("/settings/members", "members"),
        ("/events", "events"),
        ("/clusters", "clusters"),
        ("/settings", "settings"),
        ("/account", "account"),
    ];
    for (path, page) in pages {
        visit(&b, path, page).await;
    }
    let (model_name, model_version) = iris.models[0].split_once(':').unwrap();
    visit(&b, &format!("/models/{model_name}"), "model-repo").await;
    visit(&b, &format!("/models/{model_name}/{model_version}"), "model-version").await;

    b.set_viewport(375, 812, true).await;
    for (path, page) in pages {
        b.goto(path).await;
        on_page(&b, page).await;
        let o = b.horizontal_overflow().await;
        if o.viewport != 375 || o.over > 0 {
            PROBLEMS.lock().unwrap().push(format!("{path} is wider than a 375 px phone: {o:?}"));
        }
        b.screenshot(&format!("{page}-phone")).await;
    }
    b.assert_no_console_errors();
    // (Asserted at the end, so that one layout problem does not hide the rest of the flow.)
    b.reset_viewport().await;

    // ---- terminate ----
    b.goto("/deployments/iris-web").await;
    click_to(&b, "[data-action=terminate]", "deployment").await;
    wait_status(&b, "terminated", Duration::from_secs(60)).await;
    b.wait_for("[data-action=restore]").await;
    b.wait_for_none("[data-testid=replica]").await;
    b.assert_no_console_errors();
    b.screenshot("deployment-terminated").await;
    // Its replica process is gone, and its URL says so.
    wait_for("the replica to exit", Duration::from_secs(30), || {
        serve_processes_under(&server.data_dir()).is_empty().then_some(())
    });
    assert_eq!(ep.post("/about", &serde_json::json!({})).status, 503, "a terminated deployment answers 503");

    // ---- delete, after a confirmation ----
    b.click("button[data-dialog=confirm-delete]").await;
    b.wait_until("document.getElementById('confirm-delete').open").await;
    click_to(&b, "#confirm-delete [data-action=confirm]", "deployments").await;
    assert_eq!(b.count(&row("iris-web")).await, 0);
    b.assert_no_console_errors();

    // ---- change the password, then sign in by name with the new one ----
    visit(&b, "/account", "account").await;
    b.fill("form[data-form=password] [name=current]", PASSWORD).await;
    b.fill("form[data-form=password] [name=password]", "a new password, longer").await;
    submit_to(&b, "password", "account").await;
    b.wait_for("p.notice[role=status]").await;
    b.assert_no_console_errors();
    b.submit("form[data-form=logout]").await;
    on_page(&b, "login").await;
    b.fill("form[data-form=login] [name=login]", ADMIN).await;
    b.fill("form[data-form=login] [name=password]", "a new password, longer").await;
    submit_to(&b, "login", "home").await;
    b.assert_no_console_errors();

    // Every page came quickly (the server renders each in milliseconds).
    for (url, took) in b.navigation_times() {
        if took > SLOW_NAVIGATION {
            PROBLEMS.lock().unwrap().push(format!("loading {url} took {:.1} s", took.as_secs_f64()));
        }
    }

    let problems = PROBLEMS.lock().unwrap().clone();
    assert!(problems.is_empty(), "problems found on the way:\n{}", problems.join("\n"));
}

/// Polls an async condition (outside the page) until it holds.
async fn wait_for_async<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
