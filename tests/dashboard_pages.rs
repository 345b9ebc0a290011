//! The dashboard, server side, against a real `yatai serve`: sign-in and
//! sessions, CSRF on every form, organization isolation of every page, and
//! the pages built from what the real bentoml CLI pushed.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const PASSWORD: &str = "correct horse battery";

/// A cookie-keeping client that submits forms the way a browser does.
struct Browser {
    http: Http,
    cookies: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    /// The loopback address to connect from (Linux routes all of
    /// 127.0.0.0/8 on `lo`), so the server sees another client address.
    from: Option<std::net::Ipv4Addr>,
}

impl Browser {
    fn new(server: &Server) -> Browser {
        Browser { http: server.http().without_token(), cookies: Vec::new(), headers: Vec::new(), from: None }
    }

    fn from_address(server: &Server, ip: [u8; 4]) -> Browser {
        Browser { from: Some(ip.into()), ..Browser::new(server) }
    }

    /// A request over a connection made from `self.from`.
    fn raw_from(
        &self,
        from: std::net::Ipv4Addr,
        method: &str,
        path: &str,
        head: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        use std::io::Write;
        let to: std::net::SocketAddr = self.http.addr().parse().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let mut s = rt
            .block_on(async {
                let sock = tokio::net::TcpSocket::new_v4()?;
                sock.bind((from, 0).into())?;
                sock.connect(to).await?.into_std()
            })
            .unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.http.addr());
        for (k, v) in head {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        support::read_response(&mut s)
    }

    fn send(&mut self, method: &str, path: &str, body: &[u8], form: bool) -> Response {
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let mut head: Vec<(&str, &str)> = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if !cookie.is_empty() {
            head.push(("Cookie", &cookie));
        }
        if form {
            head.push(("Content-Type", "application/x-www-form-urlencoded"));
        }
        let r = match self.from {
            Some(ip) => self.raw_from(ip, method, path, &head, body),
            None => self.http.raw(method, path, &head, body, Some(body.len()), false),
        };
        for (k, v) in &r.headers {
            if k.eq_ignore_ascii_case("set-cookie") {
                let pair = v.split(';').next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                self.cookies.retain(|(n, _)| n != name);
                if !v.contains("Max-Age=0") {
                    self.cookies.push((name.to_owned(), value.to_owned()));
                }
            }
        }
        r
    }

    fn get(&mut self, path: &str) -> Response {
        self.send("GET", path, b"", false)
    }

    /// GETs a page and asserts it rendered (200).
    fn page(&mut self, path: &str) -> String {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.text()
    }

    fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in fields {
            s.append_pair(k, v);
        }
        self.send("POST", path, s.finish().as_bytes(), true)
    }

    /// Submits a form from the page at `page`, with its CSRF token.
    fn submit(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Response {
        let html = self.page(page);
        let csrf = csrf_of(&html);
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all)
    }

    fn has_session(&self) -> bool {
        self.cookies.iter().any(|(k, _)| k == "yatai_session")
    }
}

fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).unwrap_or_else(|| panic!("no CSRF field in:\n{html}"));
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn location(r: &Response) -> &str {
    r.header("location").unwrap_or_else(|| panic!("no Location (status {}): {}", r.status, r.text()))
}

fn set_cookie<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with(&format!("{name}=")))
        .map(|(_, v)| v.as_str())
}

/// Completes first-run setup as `admin` and returns the signed-in browser.
fn setup(server: &Server) -> Browser {
    let mut b = Browser::new(server);
    let r = b.submit(
        "/setup",
        "/setup",
        &[("token", &server.token), ("name", "admin"), ("email", "admin@example.com"), ("password", PASSWORD)],
    );
    assert_eq!(r.status, 303, "setup: {}", r.text());
    assert!(b.has_session());
    b
}

fn login(server: &Server, login: &str, password: &str) -> (Browser, Response) {
    let mut b = Browser::new(server);
    let r = b.submit("/login", "/login", &[("login", login), ("password", password)]);
    (b, r)
}

/// Runs `yatai` with this server's database and the given environment.
fn admin_with_env(server: &Server, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(yatai_bin());
    cmd.args(args).arg("--data-dir").arg(server.data_dir());
    if let Some(i) = server.args.iter().position(|a| a == "--database-url") {
        cmd.arg("--database-url").arg(&server.args[i + 1]);
    }
    for (k, v) in server.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(env.iter().copied()) {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "yatai {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A second organization with its own admin, `bob`, signed in.
fn other_org(server: &Server) -> Browser {
    server.admin(&["org", "create", "other"]);
    server.admin(&["user", "create", "bob", "--email", "bob@example.com", "--org", "other", "--role", "admin"]);
    admin_with_env(server, &["user", "set-password", "bob"], &[("YATAI_PASSWORD", PASSWORD)]);
    let (b, r) = login(server, "bob", PASSWORD);
    assert_eq!(r.status, 303, "bob signs in: {}", r.text());
    b
}

/// A model version made through the API (no archive needed for pages).
fn api_model(server: &Server, name: &str, version: &str) {
    let http = server.http();
    let r = http.post("/api/v1/model_repositories", &json!({"name": name}));
    assert_eq!(r.status, 200, "{}", r.text());
    let manifest =
        json!({"module": "bentoml.sklearn", "api_version": "v1", "bentoml_version": "1.4.40", "size_bytes": 1234});
    let r = http.post(
        &format!("/api/v1/model_repositories/{name}/models"),
        &json!({"version": version, "manifest": manifest, "labels": [{"key": "team", "value": "ml"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

backend_test! {
    fn setup_is_guarded_by_the_token_and_sessions_work(backend: Backend) {
        let server = Server::start(backend);
        let mut b = Browser::new(&server);
        let r = b.get("/");
        assert_eq!(r.status, 303);
        assert_eq!(location(&r), "/login?next=%2F");
        let r = b.get("/login");
        assert_eq!((r.status, location(&r)), (303, "/setup"), "login waits for setup");

        // A wrong token is refused beside its field, and nothing is set up.
        let r = b.submit("/setup", "/setup", &[("token", "yatai_wrong"), ("name", "admin"), ("email", "a@example.com"), ("password", PASSWORD)]);
        assert_eq!(r.status, 422);
        assert!(r.text().contains(r#"data-error-for="token""#), "{}", r.text());
        assert!(!b.has_session());
        // Without the form's CSRF token: 403.
        let r = b.post("/setup", &[("token", &server.token), ("name", "admin"), ("email", "a@example.com"), ("password", PASSWORD)]);
        assert_eq!(r.status, 403);
        assert!(!b.has_session());
        // A short password is refused beside its field, the other input kept.
        let r = b.submit("/setup", "/setup", &[("token", &server.token), ("name", "admin"), ("email", "a@example.com"), ("password", "short")]);
        assert_eq!(r.status, 422);
        assert!(r.text().contains(r#"data-error-for="password""#));
        assert!(r.text().contains(r#"value="a@example.com""#));

        let mut b = setup(&server);
        let home = b.page("/");
        assert!(home.contains(r#"data-page="home""#));
        let r = b.get("/setup");
        assert_eq!((r.status, location(&r)), (303, "/login"), "setup happens once");

        // Sign out: the session is gone on the server.
        let session = b.cookies.iter().find(|(k, _)| k == "yatai_session").unwrap().clone();
        let r = b.submit("/", "/logout", &[]);
        assert_eq!(r.status, 303);
        let mut replay = Browser::new(&server);
        replay.cookies.push(session);
        assert_eq!(replay.get("/").status, 303, "a signed-out cookie is dead");

        // Sign in by name or email; wrong passwords are refused.
        let (_, r) = login(&server, "admin", "wrong password");
        assert_eq!(r.status, 401);
        assert!(r.text().contains("Wrong name, email or password"));
        let (mut b, r) = login(&server, "ADMIN@example.com", PASSWORD);
        assert_eq!((r.status, location(&r)), (303, "/"));
        let cookie = set_cookie(&r, "yatai_session").unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Max-Age="), "{cookie}");
        assert!(!cookie.contains("Secure"), "plain http: {cookie}");
        assert!(b.page("/account").contains("admin@example.com"));

        // Behind an https proxy the cookie is Secure; `next` is followed
        // only within the site.
        let mut b = Browser::new(&server);
        b.headers.push(("X-Forwarded-Proto".into(), "https".into()));
        let r = b.submit("/login?next=%2Fmodels", "/login", &[("login", "admin"), ("password", PASSWORD), ("next", "/models")]);
        assert_eq!(location(&r), "/models");
        assert!(set_cookie(&r, "yatai_session").unwrap().contains("Secure"));
        let (_, r) = {
            let mut b = Browser::new(&server);
            let r = b.submit("/login", "/login", &[("login", "admin"), ("password", PASSWORD), ("next", "//evil.example/")]);
            (b, r)
        };
        assert_eq!(location(&r), "/");

        // Changing the password signs out other sessions.
        let (mut other, _) = login(&server, "admin", PASSWORD);
        let (mut b, _) = login(&server, "admin", PASSWORD);
        let r = b.submit("/account", "/account/password", &[("current", "wrong"), ("password", "another long password")]);
        assert_eq!(r.status, 422);
        assert!(r.text().contains(r#"data-error-for="current""#));
        let r = b.submit("/account", "/account/password", &[("current", PASSWORD), ("password", "another long password")]);
        assert_eq!(r.status, 303);
        assert_eq!(b.get("/").status, 200);
        assert_eq!(other.get("/").status, 303);
        assert_eq!(login(&server, "admin", PASSWORD).1.status, 401);
        assert_eq!(login(&server, "admin", "another long password").1.status, 303);
    }
}

#[test]
fn sign_in_attempts_are_rate_limited() {
    let server = Server::start(Backend::SqliteLocal);
    setup(&server);
    let attempt = |ip: [u8; 4], login: &str, password: &str| {
        let mut b = Browser::from_address(&server, ip);
        b.submit("/login", "/login", &[("login", login), ("password", password)])
    };
    // The name and the email address are one account: 3 + 2 failures lock
    // this address out of it, even with the right password.
    for _ in 0..3 {
        assert_eq!(attempt([127, 0, 0, 1], "admin", "wrong").status, 401);
    }
    for _ in 0..2 {
        assert_eq!(attempt([127, 0, 0, 1], "ADMIN@example.com", "wrong").status, 401);
    }
    let r = attempt([127, 0, 0, 1], "admin", PASSWORD);
    assert_eq!(r.status, 429, "even the right password waits: {}", r.text());
    assert!(r.text().contains("Try again in"), "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(attempt([127, 0, 0, 1], "admin@example.com", PASSWORD).status, 429, "the alias shares the count");

    // The attack: someone else's failures do not lock the owner out from
    // the owner's own address.
    let r = attempt([127, 0, 0, 2], "admin", PASSWORD);
    assert_eq!(r.status, 303, "the owner signs in from another address: {}", r.text());
    assert_eq!(location(&r), "/");

    // A name nobody has is limited the same way (limits do not tell who exists).
    for _ in 0..5 {
        assert_eq!(attempt([127, 0, 0, 3], "ghost", "wrong").status, 401);
    }
    assert_eq!(attempt([127, 0, 0, 3], "ghost", "wrong").status, 429);

    // Another account from the locked-out address is not locked by this one.
    server.admin(&["user", "create", "carol", "--email", "carol@example.com", "--org", "default"]);
    admin_with_env(&server, &["user", "set-password", "carol"], &[("YATAI_PASSWORD", PASSWORD)]);
    assert_eq!(attempt([127, 0, 0, 1], "carol", PASSWORD).status, 303);

    // Per address, whatever the accounts: 20 failures.
    for i in 0..20 {
        let r = attempt([127, 0, 0, 4], &format!("nobody{i}"), "wrong");
        assert_eq!(r.status, 401, "attempt {i}");
    }
    assert_eq!(attempt([127, 0, 0, 4], "carol", PASSWORD).status, 429);
    assert_eq!(attempt([127, 0, 0, 5], "carol", PASSWORD).status, 303);
}

#[test]
fn sign_in_redirects_only_within_the_site() {
    let server = Server::start(Backend::SqliteLocal);
    setup(&server);
    let sign_in = |next: &str| {
        let mut b = Browser::new(&server);
        let r = b.submit("/login", "/login", &[("login", "admin"), ("password", PASSWORD), ("next", next)]);
        assert_eq!(r.status, 303, "next={next:?}: {}", r.text());
        assert!(b.has_session(), "next={next:?}");
        location(&r).to_owned()
    };
    for bad in [
        "/%09/evil.example",
        "/\t/evil.example",
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "/%5Cevil.example",
        "/%2F/evil.example",
        "https://evil.example",
        "http:evil.example",
        "javascript:alert(1)",
        "%0d%0aSet-Cookie:x=1",
        "/%0d%0aSet-Cookie:x=1",
        "/\r\nSet-Cookie: x=1",
        "/\nLocation: https://evil.example",
    ] {
        assert_eq!(sign_in(bad), "/", "next={bad:?}");
    }
    assert_eq!(sign_in("/models?sort=name"), "/models?sort=name");
    assert_eq!(sign_in("/deployments/iris"), "/deployments/iris");

    // The sign-in page, reached with a hostile `next` in its URL (the
    // attack's link), carries only a safe one in its form.
    let mut b = Browser::new(&server);
    for (url, kept) in [
        ("/login?next=%2F%09%2Fevil.example", "/"),
        ("/login?next=%2F%0D%0ASet-Cookie%3Ax", "/"),
        ("/login?next=%2Fmodels", "/models"),
    ] {
        let html = b.page(url);
        assert!(html.contains(&format!(r#"name="next" value="{kept}""#)), "{url}: {html}");
    }
}

const PAGES: &[&str] = &[
    "/",
    "/models",
    "/models/iris_clf",
    "/models/iris_clf/v1",
    "/models/iris_clf/v1/download",
    "/bentos",
    "/bentos/iris",
    "/bentos/iris/v1",
    "/deployments",
    "/deployments/new",
    "/deployments/iris",
    "/deployments/iris/edit",
    "/deployments/iris/live",
    "/deployments/iris/logs",
    "/settings",
    "/settings/tokens",
    "/settings/members",
    "/events",
    "/clusters",
    "/clusters/new",
    "/clusters/local",
    "/clusters/local/edit",
    "/secrets",
    "/secrets/new",
    "/secrets/x",
    "/account",
];

const FORMS: &[&str] = &[
    "/logout",
    "/account/password",
    "/account/organization",
    "/models/iris_clf/v1/delete",
    "/bentos/iris/v1/delete",
    "/deployments/new",
    "/deployments/iris/edit",
    "/deployments/iris/terminate",
    "/deployments/iris/restore",
    "/deployments/iris/rollback",
    "/deployments/iris/delete",
    "/settings",
    "/settings/tokens",
    "/settings/tokens/x/revoke",
    "/settings/members",
    "/settings/members/x/role",
    "/settings/members/x/remove",
    "/settings/members/invitations/x/revoke",
    "/account/invitations/x/accept",
    "/account/invitations/x/decline",
    "/invitations/x",
    "/invitations/x/decline",
    "/clusters/new",
    "/clusters/local/edit",
    "/clusters/local/remove",
    "/secrets/new",
    "/secrets/x/replace",
    "/secrets/x/delete",
];

#[test]
fn every_page_and_form_needs_a_session() {
    let server = Server::start(Backend::SqliteLocal);
    setup(&server);
    let mut b = Browser::new(&server);
    for path in PAGES {
        let r = b.get(path);
        assert_eq!(r.status, 303, "GET {path} without a session");
        assert!(location(&r).starts_with("/login?next="), "GET {path}: {}", location(&r));
    }
    for path in FORMS.iter().filter(|p| **p != "/logout") {
        let r = b.post(path, &[("csrf", "x")]);
        assert_eq!(r.status, 303, "POST {path} without a session");
        assert!(location(&r).starts_with("/login"));
    }
    // Assets need no session and are cached.
    let html = Browser::new(&server).page("/login");
    let css = &html[html.find("/static/app.css").unwrap()..];
    let css = &css[..css.find('"').unwrap()];
    let r = b.get(css);
    assert_eq!(r.status, 200);
    assert!(r.header("cache-control").unwrap().contains("max-age"));
    // A page that does not exist is a page for a browser, JSON for the API.
    b.headers.push(("Accept".into(), "text/html".into()));
    let r = b.get("/no/such/page");
    assert_eq!(r.status, 404);
    assert!(r.text().contains(r#"data-page="error""#), "{}", r.text());
    let r = b.get("/api/v1/no_such_route");
    assert_eq!(r.status, 404);
    assert!(r.text().starts_with('{'));
}

#[test]
fn every_form_is_refused_without_its_csrf_token() {
    let server = Server::start(Backend::SqliteLocal);
    let mut b = setup(&server);
    api_model(&server, "iris_clf", "v1");
    let good = b.csrf_for_tests();
    for path in FORMS {
        for fields in [vec![], vec![("csrf", "0".repeat(64))]] {
            let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut all = fields.clone();
            all.extend([
                ("name", "sneaky"),
                ("password", "a long enough password"),
                ("current", PASSWORD),
                ("description", "changed"),
                ("role", "guest"),
            ]);
            let r = b.post(path, &all);
            assert_eq!(r.status, 403, "POST {path} with {fields:?}: {}", r.text());
            assert!(r.text().contains("security token"), "a readable page: {}", r.text());
        }
    }
    // Nothing changed: still signed in, the model, the password, the members
    // and the settings are as they were, and no token was made.
    assert!(!good.is_empty());
    assert_eq!(b.get("/").status, 200);
    assert_eq!(b.get("/models/iris_clf/v1").status, 200);
    assert!(!b.page("/settings/members").contains("sneaky"));
    assert!(!b.page("/settings/tokens").contains("sneaky"));
    assert!(!b.page("/settings").contains("changed"));
    assert_eq!(login(&server, "admin", PASSWORD).1.status, 303);

    // With its token the same form works: a version nothing uses is deleted.
    let r = b.submit("/models/iris_clf/v1", "/models/iris_clf/v1/delete", &[]);
    assert_eq!(r.status, 303);
    assert!(location(&r).starts_with("/models/iris_clf?notice=Deleted"), "{}", location(&r));
    assert_eq!(b.get("/models/iris_clf/v1").status, 404);
}

impl Browser {
    /// Reads a server-sent event stream until `until` appears or `limit`
    /// passes, and returns what came (head and body).
    fn read_stream(&self, path: &str, until: &str, limit: Duration) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.http.addr()).unwrap();
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n",
            self.http.addr()
        )
        .unwrap();
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while Instant::now() < deadline && !String::from_utf8_lossy(&got).contains(until) {
            s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
                .unwrap();
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    fn csrf_for_tests(&mut self) -> String {
        csrf_of(&self.page("/"))
    }
}

#[test]
fn tokens_are_shown_once_and_work_with_the_api() {
    let server = Server::start(Backend::SqliteLocal);
    let mut b = setup(&server);
    let r = b.submit("/settings/tokens", "/settings/tokens", &[("name", ""), ("expires_in_days", "0")]);
    assert_eq!(r.status, 422);
    assert!(r.text().contains(r#"data-error-for="name""#) && r.text().contains(r#"data-error-for="expires_in_days""#));

    let r = b.submit(
        "/settings/tokens",
        "/settings/tokens",
        &[("name", "laptop"), ("scopes", "read_organization"), ("scopes", "read_cluster"), ("expires_in_days", "30")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let html = r.text();
    let at = html.find(r#"data-testid="new-token""#).expect("the new token is shown");
    let code = &html[at..];
    let secret = &code[code.find("yatai_").unwrap()..];
    let secret = secret[..secret.find('<').unwrap()].to_owned();
    assert!(html.contains(&format!("bentoml cloud login --api-token {secret} --endpoint {}", server.url)));
    assert_eq!(r.header("cache-control"), Some("no-store"));

    let api = server.http().with_token(&secret);
    let me = api.get("/api/v1/auth/current");
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["name"], "admin");
    let write = api.post("/api/v1/model_repositories", &json!({"name": "nope"}));
    assert_eq!(write.status, 403, "the token has only the read scopes it was given");

    let list = b.page("/settings/tokens");
    assert!(!list.contains(&secret), "shown once only");
    assert!(list.contains(r#"data-name="laptop""#));
    assert!(list.contains("read_organization, read_cluster"));

    // Revoke: the API stops accepting it.
    let uid_at = list.find("/settings/tokens/").unwrap();
    let rest = &list[uid_at..];
    let action = rest[..rest.find('"').unwrap()].to_owned();
    let tokens_before = list.matches(r#"data-testid="row""#).count();
    let r = b.submit("/settings/tokens", &action, &[]);
    assert_eq!(r.status, 303);
    wait_for("the revoked token to be refused", Duration::from_secs(10), || {
        (api.get("/api/v1/auth/current").status == 401).then_some(())
    });
    assert_eq!(b.page("/settings/tokens").matches(r#"data-testid="row""#).count(), tokens_before - 1);
}

/// The invitation link on the page an invitation form answered with.
fn invite_link(html: &str) -> String {
    let at = html.find(r#"id="invite-link""#).unwrap_or_else(|| panic!("no invitation link in:\n{html}"));
    let rest = &html[at..];
    let from = rest.find("/invitations/").unwrap();
    let rest = &rest[from..];
    rest[..rest.find('<').unwrap()].to_owned()
}

/// The `action` of the first form whose action starts with `prefix`.
fn action_of(html: &str, prefix: &str) -> String {
    let at = html.find(&format!(r#"action="{prefix}"#)).unwrap_or_else(|| panic!("no {prefix} form in:\n{html}"));
    let rest = &html[at + r#"action=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

const INVITED: &str = "Invitation created; it is shown on the pending list.";

#[test]
fn members_are_managed_and_the_last_admin_stays() {
    let server = Server::start(Backend::SqliteLocal);
    let mut b = setup(&server);
    let r = b.submit("/settings/members", "/settings/members", &[("invitee", "not a name!"), ("role", "boss")]);
    assert_eq!(r.status, 422);
    assert!(r.text().contains(r#"data-error-for="invitee""#) && r.text().contains(r#"data-error-for="role""#));
    let r = b.submit("/settings/members", "/settings/members", &[("invitee", "admin"), ("role", "guest")]);
    assert_eq!(r.status, 422, "a member already");
    // A new user joins through the link, creating their account.
    let r = b.submit("/settings/members", "/settings/members", &[("invitee", "dana@example.com"), ("role", "guest")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let link = invite_link(&r.text());
    let mut dana = Browser::new(&server);
    let page = dana.page(&link);
    assert!(page.contains(r#"data-page="invitation""#) && page.contains(r#"value="dana@example.com""#), "{page}");
    let r = dana.submit(
        &link,
        &format!("{link}/signup"),
        &[("name", "dana"), ("email", "dana@example.com"), ("password", PASSWORD)],
    );
    assert_eq!((r.status, location(&r)), (303, "/"), "{}", r.text());
    let (mut dana, r) = login(&server, "dana", PASSWORD);
    assert_eq!(r.status, 303);
    // A guest sees pages but may not administer.
    assert_eq!(dana.get("/settings/members").status, 200);
    let r = dana.submit("/settings/members", "/settings/members", &[("invitee", "eve"), ("role", "admin")]);
    assert_eq!(r.status, 403);
    let r = dana.submit("/settings/tokens", "/settings/tokens", &[("name", "mine")]);
    assert_eq!(r.status, 200, "anyone may make their own token");

    // The only admin cannot be demoted or removed.
    let members = b.page("/settings/members");
    assert!(members.contains(r#"data-name="dana""#));
    let admin_row = &members[members.find(r#"data-name="admin""#).unwrap()..];
    let role_at = admin_row.find("/settings/members/").unwrap();
    let uid = &admin_row[role_at + "/settings/members/".len()..];
    let uid = uid[..uid.find('/').unwrap()].to_owned();
    let r = b.submit("/settings/members", &format!("/settings/members/{uid}/role"), &[("role", "guest")]);
    assert!(location(&r).contains("last%20admin") || location(&r).contains("last+admin"), "{}", location(&r));
    let r = b.submit("/settings/members", &format!("/settings/members/{uid}/remove"), &[]);
    assert!(location(&r).contains("last"), "{}", location(&r));
    assert_eq!(b.get("/settings/tokens").status, 200, "still admin");
}

backend_test! {
    fn inviting_adds_nobody_without_their_consent_and_reveals_nobody(backend: Backend) {
        let server = Server::start(backend);
        let mut admin = setup(&server);
        let mut bob = other_org(&server);

        // The attack, old form: adding another organization's user by name.
        let r =
            admin.submit("/settings/members", "/settings/members", &[("name", "bob"), ("role", "admin"), ("password", "")]);
        assert_eq!(r.status, 422, "{}", r.text());
        let members = admin.page("/settings/members");
        assert!(!members.contains(r#"data-name="bob""#), "bob was not added");
        assert!(!members.contains("bob@example.com"));

        // Inviting him: the same answer as for a name nobody has, and neither
        // his email nor his membership appears.
        let existing = admin.submit("/settings/members", "/settings/members", &[("invitee", "bob"), ("role", "admin")]);
        let missing = admin.submit("/settings/members", "/settings/members", &[("invitee", "nobody"), ("role", "admin")]);
        let by_email =
            admin.submit("/settings/members", "/settings/members", &[("invitee", "bob@example.com"), ("role", "guest")]);
        let by_missing_email =
            admin.submit("/settings/members", "/settings/members", &[("invitee", "nobody@example.com"), ("role", "guest")]);
        for r in [&existing, &missing, &by_email, &by_missing_email] {
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(r.text().contains(INVITED), "{}", r.text());
            assert_eq!(r.header("cache-control"), Some("no-store"));
            for telling in ["no such", "not found", "exists", "unknown"] {
                assert!(!r.text().to_lowercase().contains(telling), "{telling}: {}", r.text());
            }
        }
        // The pages differ only where the typed name and the link are.
        let shape = |r: &Response, typed: &str| {
            let t = r.text();
            let link = invite_link(&t);
            t.replace(&link, "LINK").replace(typed, "TYPED")
        };
        let (a, b) = (shape(&existing, "bob"), shape(&missing, "nobody"));
        // The pending list holds both, in the other order on each page; compare
        // everything before it.
        let cut = |t: &str| t[..t.find("Pending invitations").unwrap()].to_owned();
        assert_eq!(cut(&a), cut(&b));
        assert!(!existing.text().contains("bob@example.com"), "a name never shows the email");
        let members = admin.page("/settings/members");
        assert!(!members.contains(r#"data-name="bob""#), "an invitation adds nobody");
        assert!(members.contains(r#"data-invitee="bob""#) && members.contains(r#"data-invitee="nobody""#));
        let r = bob.submit("/account", "/account/organization", &[("org", "default")]);
        assert_eq!(r.status, 404, "bob is not in default until he accepts");

        // bob finds the invitations on his account page; declining one, then
        // accepting the other, makes him a member with the invited role.
        let account = bob.page("/account");
        assert_eq!(account.matches(r#"data-testid="invitation""#).count(), 2, "by name and by email: {account}");
        let decline = action_of(&account, "/account/invitations/");
        let decline = decline.replace("/accept", "/decline");
        let r = bob.submit("/account", &decline, &[]);
        assert_eq!(r.status, 303);
        let account = bob.page("/account");
        assert_eq!(account.matches(r#"data-testid="invitation""#).count(), 1);
        let accept = action_of(&account, "/account/invitations/");
        assert!(accept.ends_with("/accept"));
        let r = bob.submit("/account", &accept, &[]);
        assert_eq!(r.status, 303, "{}", r.text());
        assert!(location(&r).contains("joined"), "{}", location(&r));
        assert!(bob.page("/").contains("default"), "bob now works in default");
        let members = admin.page("/settings/members");
        assert!(members.contains(r#"data-name="bob""#));
        assert_eq!(bob.submit("/account", &accept, &[]).status, 404, "an invitation is used once");

        // Someone who is not the invitee cannot take an invitation from the
        // account page: it is not listed for them, and its id does not work.
        let r = admin.submit("/settings/members", "/settings/members", &[("invitee", "frank"), ("role", "admin")]);
        let frank_link = invite_link(&r.text());
        let mut eve = {
            server.admin(&["user", "create", "eve", "--email", "eve@example.com", "--org", "other"]);
            admin_with_env(&server, &["user", "set-password", "eve"], &[("YATAI_PASSWORD", PASSWORD)]);
            login(&server, "eve", PASSWORD).0
        };
        assert!(!eve.page("/account").contains(r#"data-testid="invitation""#));
        let members = admin.page("/settings/members");
        let frank_row = &members[members.find(r#"data-invitee="frank""#).unwrap()..];
        let revoke = action_of(frank_row, "/settings/members/invitations/");
        let uid = revoke.trim_start_matches("/settings/members/invitations/").trim_end_matches("/revoke");
        let r = eve.submit("/account", &format!("/account/invitations/{uid}/accept"), &[]);
        assert_eq!(r.status, 404);
        // Revoked, the link stops working.
        let r = admin.submit("/settings/members", &revoke, &[]);
        assert_eq!(r.status, 303);
        assert!(!admin.page("/settings/members").contains(r#"data-invitee="frank""#));
        assert_eq!(Browser::new(&server).get(&frank_link).status, 404);

        // A user of no organization (who cannot sign in anywhere yet) accepts
        // with the link by signing in on it.
        server.admin(&["user", "create", "gina", "--email", "gina@example.com", "--org", "other"]);
        admin_with_env(&server, &["user", "set-password", "gina"], &[("YATAI_PASSWORD", PASSWORD)]);
        let r = bob.submit("/account", "/account/organization", &[("org", "other")]);
        assert_eq!(r.status, 303);
        let members = bob.page("/settings/members");
        let gina_row = &members[members.find(r#"data-name="gina""#).unwrap()..];
        let remove = action_of(gina_row, "/settings/members/");
        let remove = format!("{}/remove", remove.trim_end_matches("/role"));
        assert_eq!(bob.submit("/settings/members", &remove, &[]).status, 303);
        assert_eq!(login(&server, "gina", PASSWORD).1.status, 403, "no organization any more");
        let r = admin.submit("/settings/members", "/settings/members", &[("invitee", "gina"), ("role", "developer")]);
        let link = invite_link(&r.text());
        let mut gina = Browser::new(&server);
        let r = gina.submit(&link, &format!("{link}/signin"), &[("login", "gina"), ("current", "wrong")]);
        assert_eq!(r.status, 401);
        let r = gina.submit(&link, &format!("{link}/signin"), &[("login", "gina"), ("current", PASSWORD)]);
        assert_eq!(r.status, 303, "{}", r.text());
        assert!(gina.page("/account").contains("developer"));
        // And a signed-in user accepts with the link too (eve, from other).
        let r = admin.submit("/settings/members", "/settings/members", &[("invitee", "eve"), ("role", "guest")]);
        let link = invite_link(&r.text());
        let page = eve.page(&link);
        assert!(page.contains(r#"data-form="invitation-accept""#), "{page}");
        let r = eve.submit(&link, &link, &[]);
        assert_eq!(r.status, 303, "{}", r.text());
        assert!(admin.page("/settings/members").contains(r#"data-name="eve""#));
        assert_eq!(Browser::new(&server).get(&link).status, 404, "used");
    }
}

/// A kubeconfig for a cluster nobody listens for, carrying `marker` as its token.
fn dead_kubeconfig(marker: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: dead\n  cluster:\n    server: https://127.0.0.1:1\n    \
         insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: {marker}\ncontexts:\n- name: dead\n  \
         context:\n    cluster: dead\n    user: u\ncurrent-context: dead\n"
    )
}

#[test]
fn clusters_are_changed_by_admins_only_and_a_kubeconfig_is_never_shown() {
    let server = Server::start(Backend::SqliteLocal);
    let mut b = setup(&server);
    // The organization's `local` cluster (listing clusters makes it).
    assert_eq!(server.http().get("/api/v1/clusters").status, 200);
    let list = b.page("/clusters");
    assert!(list.contains(r#"data-name="local""#) && list.contains(r#"href="/clusters/new""#), "{list}");
    let local = b.page("/clusters/local");
    assert!(local.contains(r#"data-page="cluster""#) && local.contains(r#"href="/clusters/local/edit""#), "{local}");
    assert!(!local.contains("confirm-remove"), "this machine cannot be removed");
    let r = b.submit("/clusters/local/edit", "/clusters/local/edit", &[("description", "the build box")]);
    assert_eq!((r.status, location(&r)), (303, "/clusters/local?notice=Saved."), "{}", r.text());
    assert!(b.page("/clusters/local").contains("the build box"));

    // Registrations that cannot work are refused beside their field, the other input kept,
    // the kubeconfig neither stored nor sent back.
    let marker = unique("kubeconfig-secret");
    let form = b.page("/clusters/new");
    assert!(form.contains(r#"data-form="cluster""#) && form.contains(r#"name="kube_config""#), "{form}");
    let register = |b: &mut Browser, name: &str, kubeconfig: &str| {
        b.submit(
            "/clusters/new",
            "/clusters/new",
            &[("name", name), ("description", "kept text"), ("kube_config", kubeconfig), ("namespace", "yatai")],
        )
    };
    for (name, kubeconfig, field, says) in [
        ("dead", dead_kubeconfig(&marker), "kube_config", "cannot reach the Kubernetes API server"),
        ("garbage", format!("# {marker}\n{{not yaml: ["), "kube_config", "not valid YAML"),
        ("Bad_Name", dead_kubeconfig(&marker), "name", "not valid"),
        ("local", dead_kubeconfig(&marker), "name", "local"),
        ("empty", String::new(), "kube_config", "kubeconfig"),
    ] {
        let r = register(&mut b, name, &kubeconfig);
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        let html = r.text();
        let error =
            &html[html.find(&format!(r#"data-error-for="{field}""#)).unwrap_or_else(|| panic!("{name}: {html}"))..];
        let error = &error[..error.find("</p>").unwrap()];
        assert!(error.contains(says), "{name}: {error}");
        assert!(html.contains(r#"value="kept text""#), "{name}: the input is kept");
        assert!(!html.contains(&marker), "{name}: the kubeconfig came back: {error}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    let r = b.submit("/clusters/new", "/clusters/new", &[("name", "both"), ("kube_config", "x"), ("in_cluster", "on")]);
    assert_eq!(r.status, 422);
    assert!(r.text().contains("not both"), "{}", r.text());
    assert!(!b.page("/clusters").contains(r#"data-name="dead""#), "nothing stored");
    assert!(!server.http().get("/api/v1/clusters").text().contains("\"dead\""));
    for page in ["/clusters", "/clusters/local", "/clusters/local/edit", "/events", "/"] {
        assert!(!b.page(page).contains(&marker), "{page} shows the kubeconfig");
    }
    assert!(!server.log_text().contains(&marker), "the kubeconfig is in the server's log");

    // A developer reads, and changes nothing.
    server.admin(&["user", "create", "dev", "--email", "dev@example.com", "--org", "default", "--role", "developer"]);
    admin_with_env(&server, &["user", "set-password", "dev"], &[("YATAI_PASSWORD", PASSWORD)]);
    let (mut dev, r) = login(&server, "dev", PASSWORD);
    assert_eq!(r.status, 303);
    let list = dev.page("/clusters");
    assert!(list.contains(r#"data-name="local""#) && !list.contains(r#"href="/clusters/new""#), "{list}");
    let local = dev.page("/clusters/local");
    assert!(!local.contains("/clusters/local/edit") && !local.contains("<form data-form=\"cluster"), "{local}");
    for path in ["/clusters/new", "/clusters/local/edit"] {
        assert_eq!(dev.get(path).status, 403, "dev GET {path}");
    }
    for path in ["/clusters/new", "/clusters/local/edit", "/clusters/local/remove"] {
        let r =
            dev.submit("/clusters", path, &[("name", "mine"), ("description", "dev was here"), ("kube_config", "x")]);
        assert_eq!(r.status, 403, "dev POST {path}: {}", r.text());
    }
    assert!(b.page("/clusters/local").contains("the build box"), "unchanged");

    // Another organization sees none of it.
    let mut bob = other_org(&server);
    assert!(!bob.page("/clusters").contains("the build box"));
    for path in ["/clusters/local", "/clusters/local/edit"] {
        assert_eq!(bob.get(path).status, 404, "bob GET {path}");
    }
    for path in ["/clusters/local/edit", "/clusters/local/remove"] {
        assert_eq!(bob.submit("/clusters", path, &[("description", "bob was here")]).status, 404, "bob POST {path}");
    }
    assert!(b.page("/clusters/local").contains("the build box"), "unchanged");
}

#[test]
fn secret_pages_show_no_value_and_only_their_organization() {
    let server = Server::start(Backend::SqliteLocal);
    let mut b = setup(&server);
    let value = unique("secret-value");
    let item = [("item_key", "TOKEN"), ("item_sub_path", ""), ("item_value", value.as_str())];
    let mut fields = vec![("name", "db"), ("description", "the database"), ("type", "env"), ("stage", "runtime")];
    fields.extend(item);
    let r = b.submit("/secrets/new", "/secrets/new", &fields);
    assert_eq!((r.status, location(&r)), (303, "/secrets/db?notice=Created+secret+db."), "{}", r.text());
    // Refused: the same name again; the typed value does not come back.
    let r = b.submit("/secrets/new", "/secrets/new", &fields);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("already exists") && r.text().contains("data-retype"), "{}", r.text());
    assert!(!r.text().contains(&value));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // A replace that keeps the value (empty) changes the description only.
    let r = b.submit(
        "/secrets/db",
        "/secrets/db/replace",
        &[("description", "kept"), ("type", "env"), ("item_key", "TOKEN"), ("item_sub_path", ""), ("item_value", "")],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    for page in ["/secrets", "/secrets/db", "/secrets/new", "/events", "/"] {
        let html = b.page(page);
        assert!(!html.contains(&value), "{page} shows the value");
    }
    assert!(b.page("/secrets/db").contains(r#"data-testid="description">kept<"#));
    assert!(!server.log_text().contains(&value), "the value is in the server's log");

    // Another organization sees none of it.
    let mut bob = other_org(&server);
    assert!(!bob.page("/secrets").contains(r#"data-name="db""#));
    assert_eq!(bob.get("/secrets/db").status, 404);
    for path in ["/secrets/db/replace", "/secrets/db/delete"] {
        assert_eq!(bob.submit("/secrets", path, &item).status, 404, "bob POST {path}");
    }
    assert!(b.page("/secrets/db").contains(r#"data-testid="description">kept<"#), "unchanged");
}

#[test]
fn a_member_of_two_organizations_works_in_one_at_a_time() {
    let server = Server::start(Backend::SqliteLocal);
    let mut admin = setup(&server);
    api_model(&server, "shared_clf", "v1");
    server.admin(&["org", "create", "lab"]);
    server.admin(&["user", "create", "carol", "--email", "carol@example.com", "--org", "default"]);
    server.admin(&["user", "create", "carol", "--org", "lab", "--role", "guest"]);
    admin_with_env(&server, &["user", "set-password", "carol"], &[("YATAI_PASSWORD", PASSWORD)]);
    let (mut carol, _) = login(&server, "carol", PASSWORD);
    assert!(carol.page("/models").contains(r#"data-name="shared_clf""#), "carol starts in default");
    let r = carol.submit("/account", "/account/organization", &[("org", "lab")]);
    assert_eq!(r.status, 303);
    assert!(!carol.page("/models").contains(r#"data-name="shared_clf""#));
    assert_eq!(carol.get("/models/shared_clf").status, 404, "default's models are out of reach from lab");
    let r = carol.submit("/account", "/account/organization", &[("org", "nope")]);
    assert_eq!(r.status, 404);
    assert_eq!(admin.get("/models/shared_clf").status, 200);
}

/// Keeps `yatai serve`'s replicas from outliving a failed test.
struct StopOnDrop<'a>(&'a mut Server);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.stop()));
        }
    }
}

backend_test! {
    fn pages_show_a_pushed_bento_and_never_another_organizations_data(backend: Backend) {
        let mut server = Server::start(backend);
        let guard = StopOnDrop(&mut server);
        let server = &*guard.0;
        let iris = iris_home();
        let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
        client.ok(&["push", &iris.bento]);
        client.ok(&["push", &iris.needs_env]);
        let (repo, version) = iris.bento.split_once(':').unwrap();
        let mut b = setup(server);

        // Lists and the version page.
        let bentos = b.page("/bentos");
        assert!(bentos.contains(&format!(r#"data-name="{repo}""#)), "{bentos}");
        let models = b.page("/models");
        assert!(models.contains(r#"data-name="iris_clf""#));
        let versions = b.page(&format!("/bentos/{repo}"));
        assert!(versions.contains(&format!(r#"data-name="{version}""#)));
        let page = b.page(&format!("/bentos/{repo}/{version}"));
        assert!(page.contains(r#"data-page="bento-version""#));
        for expected in [
            "classify",                                   // an API of the service
            "input_series",                               // its input schema
            "/models/iris_clf/",                          // the models it uses, linked
            "/models/iris_notes/",
            "scikit-learn",                               // Python requirements
            "success",                                    // upload status
            "admin",                                      // creator
            &format!("bentoml pull {repo}:{version}"),
            &format!("bentoml deployment create {repo}:{version}"),
            &format!("/bentos/{repo}/{version}/download"),
        ] {
            assert!(page.contains(expected), "the version page shows {expected:?}:\n{page}");
        }
        let r = b.get(&format!("/bentos/{repo}/{version}/download"));
        assert_eq!(r.status, 200);
        assert!(r.body.len() > 1000, "the archive");
        let model = b.page(models[models.find("/models/iris_clf/").unwrap()..].split('"').next().unwrap());
        assert!(model.contains(r#"data-page="model-version""#) && model.contains(repo), "a model links its bentos");
        assert!(model.contains(r#"data-testid="delete-blocked""#), "a model a bento uses cannot be deleted");

        // The deployment form: errors beside their fields, input kept.
        let r = b.submit("/deployments/new", "/deployments/new", &[
            ("name", "Bad_Name"), ("bento_repository", repo), ("bento_version", version), ("cluster", "local"),
            ("min_replicas", "1"), ("max_replicas", "1"), ("envs", ""),
        ]);
        assert_eq!(r.status, 422);
        assert!(r.text().contains(r#"data-error-for="name""#), "{}", r.text());
        let r = b.submit("/deployments/new", "/deployments/new", &[
            ("name", "-iris"), ("bento_repository", repo), ("bento_version", version), ("cluster", "local"),
            ("min_replicas", "3"), ("max_replicas", "2"), ("envs", "GOOD=1\nno equals sign"),
        ]);
        assert_eq!(r.status, 422);
        let text = r.text();
        assert!(text.contains(r#"data-error-for="max_replicas""#) && text.contains(r#"data-error-for="envs""#), "{text}");
        assert!(text.contains(r#"data-error-for="name""#), "every field's error at once: {text}");
        assert!(text.contains("GOOD=1\nno equals sign"), "the input is kept");
        let (env_repo, env_version) = iris.needs_env.split_once(':').unwrap();
        let r = b.submit("/deployments/new", "/deployments/new", &[
            ("name", "needs-env"), ("bento_repository", env_repo), ("bento_version", env_version), ("cluster", "local"),
            ("min_replicas", "1"), ("max_replicas", "1"), ("envs", ""),
        ]);
        assert_eq!(r.status, 422);
        assert!(r.text().contains(r#"data-error-for="envs""#), "a required env: {}", r.text());

        // Deploy from the form.
        let r = b.submit("/deployments/new", "/deployments/new", &[
            ("name", "iris"), ("bento_repository", repo), ("bento_version", version), ("cluster", "local"),
            ("min_replicas", "1"), ("max_replicas", "1"), ("envs", "IRIS_VARIANT=web"), ("secrets", "ghost-secret"),
        ]);
        assert_eq!(r.status, 422, "a secret that does not exist: {}", r.text());
        assert!(r.text().contains(r#"data-error-for="secrets""#) && r.text().contains("ghost-secret"), "{}", r.text());
        // The organization's secrets are offered by name; their values never reach the form.
        client.ok(&["secret", "create", "form-secret", "FORM_KEY=form-value-71c3"]);
        let form = b.page("/deployments/new");
        assert!(form.contains(r#"name="secrets" value="form-secret""#) && !form.contains("form-value-71c3"), "{form}");
        let r = b.submit("/deployments/new", "/deployments/new", &[
            ("name", "iris"), ("bento_repository", repo), ("bento_version", version), ("cluster", "local"),
            ("min_replicas", "1"), ("max_replicas", "1"), ("envs", "IRIS_VARIANT=web"), ("secrets", "form-secret"),
        ]);
        assert_eq!((r.status, location(&r)), (303, "/deployments/iris"), "{}", r.text());
        let revisions = server.http().get("/api/v2/deployments/iris/revisions").text();
        assert!(revisions.contains("form-secret") && !revisions.contains("form-value-71c3"), "{revisions}");
        let detail = b.page("/deployments/iris");
        assert!(detail.contains(r#"data-testid="status""#) && detail.contains(r#"data-revision="1""#));
        assert!(b.page("/deployments").contains(r#"data-name="iris""#));
        assert!(b.page("/").contains(r#"data-name="iris""#));
        let edit = b.page("/deployments/iris/edit");
        assert!(edit.contains("IRIS_VARIANT=web"), "the edit form holds the current configuration");
        assert!(edit.contains(r#"name="secrets" value="form-secret" checked"#), "and its secrets: {edit}");

        // Delete is refused while a deployment uses the bento, with the reason.
        let page = b.page(&format!("/bentos/{repo}/{version}"));
        assert!(page.contains(r#"data-testid="delete-blocked""#) && page.contains("iris"), "{page}");
        let r = b.submit(&format!("/bentos/{repo}/{version}"), &format!("/bentos/{repo}/{version}/delete"), &[]);
        assert_eq!(r.status, 303);
        assert!(location(&r).contains("Not%20deleted") || location(&r).contains("Not+deleted"), "{}", location(&r));
        assert_eq!(b.get(&format!("/bentos/{repo}/{version}")).status, 200, "still there");

        // Another organization sees none of it and can touch none of it.
        let mut bob = other_org(server);
        assert!(!bob.page("/bentos").contains(&format!(r#"data-name="{repo}""#)));
        assert!(!bob.page("/models").contains(r#"data-name="iris_clf""#));
        assert!(!bob.page("/deployments").contains(r#"data-name="iris""#));
        assert!(!bob.page("/").contains(r#"data-name="iris""#));
        assert!(!bob.page("/events").contains(version));
        assert!(!bob.page("/settings/tokens").contains(r#"data-name="initial""#), "the other org's tokens");
        assert!(!bob.page("/settings/members").contains("admin@example.com"));
        for path in [
            format!("/bentos/{repo}"),
            format!("/bentos/{repo}/{version}"),
            format!("/bentos/{repo}/{version}/download"),
            "/models/iris_clf".to_owned(),
            "/deployments/iris".to_owned(),
            "/deployments/iris/edit".to_owned(),
            "/deployments/iris/live".to_owned(),
            "/deployments/iris/logs".to_owned(),
        ] {
            assert_eq!(bob.get(&path).status, 404, "bob GET {path}");
        }
        let admin_tokens = b.page("/settings/tokens");
        let t = &admin_tokens[admin_tokens.find("/settings/tokens/").unwrap()..];
        let revoke = t[..t.find('"').unwrap()].to_owned();
        for path in [
            format!("/bentos/{repo}/{version}/delete"),
            "/deployments/iris/terminate".to_owned(),
            "/deployments/iris/delete".to_owned(),
            "/deployments/iris/rollback".to_owned(),
            revoke.clone(),
        ] {
            let r = bob.submit("/", &path, &[]);
            assert_eq!(r.status, 404, "bob POST {path}: {}", r.text());
        }
        assert_eq!(server.http().get("/api/v1/auth/current").status, 200, "the admin's token still works");
        assert!(server.http().get("/api/v2/deployments/iris").json()["status"] != "terminated");

        // Live parts: status and replicas, and the log, as server-sent events.
        let live = b.read_stream("/deployments/iris/live", "event: state", Duration::from_secs(20));
        assert!(live.contains("text/event-stream") && live.contains(r#""status":"#), "{live}");
        wait_for("log lines", Duration::from_secs(120), || {
            let logs = b.read_stream("/deployments/iris/logs", "data: ", Duration::from_secs(5));
            logs.contains("data: ").then_some(())
        });

        // Update to another build from the edit form, compare revisions, and
        // roll back with one click.
        client.ok(&["push", &iris.bento_v2]);
        let (_, version2) = iris.bento_v2.split_once(':').unwrap();
        let r = b.submit("/deployments/iris/edit", "/deployments/iris/edit", &[
            ("bento_repository", repo), ("bento_version", version2), ("min_replicas", "1"), ("max_replicas", "2"),
            ("envs", "IRIS_VARIANT=v2"),
        ]);
        assert_eq!(r.status, 303, "{}", r.text());
        let detail = b.page("/deployments/iris?a=1&b=2");
        assert!(detail.contains(r#"data-revision="2""#));
        let diff = &detail[detail.find(r#"data-testid="diff""#).expect("a diff")..];
        assert!(diff.contains("IRIS_VARIANT") && diff.contains(version2), "{diff}");
        let r1 = &detail[detail.find(r#"data-revision="1""#).unwrap()..];
        let uid_at = r1.find(r#"name="revision_uid" value=""#).expect("r1 can be rolled back to");
        let uid = &r1[uid_at + r#"name="revision_uid" value=""#.len()..];
        let uid = uid[..uid.find('"').unwrap()].to_owned();
        let r = b.submit("/deployments/iris", "/deployments/iris/rollback", &[("revision_uid", &uid)]);
        assert_eq!(r.status, 303);
        let detail = b.page("/deployments/iris");
        let r3 = &detail[detail.find(r#"data-revision="3""#).expect("a third revision")..];
        assert!(r3[..r3.find("</tr>").unwrap()].contains("rollback to r1") && r3.contains(version), "{r3}");

        // Terminate from the page; the status says so.
        let r = b.submit("/deployments/iris", "/deployments/iris/terminate", &[]);
        assert_eq!(r.status, 303);
        wait_for("the deployment to be terminated", Duration::from_secs(60), || {
            b.page("/deployments/iris").contains(r#"data-testid="status" data-live-status>terminated<"#).then_some(())
        });
        let page = b.page("/deployments/iris");
        assert!(page.contains(r#"data-action="restore""#) && !page.contains(r#"data-action="terminate""#));

        // Restore brings it back; delete (through the dialog's form) removes it.
        let r = b.submit("/deployments/iris", "/deployments/iris/restore", &[]);
        assert_eq!(r.status, 303);
        wait_for("the restored deployment to run", Duration::from_secs(120), || {
            (server.http().get("/api/v2/deployments/iris").json()["status"] == "running").then_some(())
        });

        // Open event streams (a dashboard tab) do not keep the server from
        // stopping; after a restart the session and the deployment are back.
        let tab = {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(b.http.addr()).unwrap();
            let cookie = b.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
            for path in ["/deployments/iris/live", "/deployments/iris/logs"] {
                write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n").unwrap();
            }
            s
        };
        let live = b.read_stream("/deployments/iris/live", "event: state", Duration::from_secs(20));
        assert!(live.contains("event: state"));
        let stopping = Instant::now();
        guard.0.stop();
        assert!(stopping.elapsed() < Duration::from_secs(15), "stopping took {:?}", stopping.elapsed());
        drop(tab);
        guard.0.start_again();
        let server = &*guard.0;
        assert_eq!(b.get("/deployments/iris").status, 200, "the session outlives a restart");

        let r = b.submit("/deployments/iris", "/deployments/iris/delete", &[]);
        assert_eq!((r.status, location(&r).split('?').next().unwrap()), (303, "/deployments"));
        assert_eq!(b.get("/deployments/iris").status, 404);
        assert_eq!(server.http().get("/api/v2/deployments/iris").status, 404);
        drop(guard);
    }
}

/// Pages stay fast with a repository of 100,000 versions (made directly in
/// the database; the pages only read).
#[test]
fn pages_render_fast_with_100000_versions() {
    let server = Server::start(Backend::SqliteLocal);
    let mut b = setup(&server);
    api_model(&server, "big", "v0");
    let db = server.data_dir().join("yatai.db");
    let sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) \
        INSERT INTO versions (uid, repository_uid, version, description, manifest, labels, upload_status, \
        upload_finished_reason, image_build_status, created_at) \
        SELECT 'u' || i, r.uid, 'v' || i, '', '{\"module\":\"m\",\"api_version\":\"v1\",\"bentoml_version\":\"1.4.40\",\"size_bytes\":1}', \
        '[]', 'success', '', '', 1700000000000000 + i FROM n, repositories r WHERE r.name = 'big';";
    let out = Command::new("sqlite3").arg(&db).arg(sql).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for i in 0..40 {
        api_model(&server, &format!("repo{i}"), "v1");
    }

    // The median of three requests, measured at the client (so it includes
    // the loopback round trip).
    let mut worst = Duration::ZERO;
    let mut timed = |b: &mut Browser, path: &str| -> String {
        let mut times = Vec::new();
        let mut html = String::new();
        for _ in 0..3 {
            let started = Instant::now();
            html = b.page(path);
            times.push(started.elapsed());
        }
        times.sort();
        eprintln!("{path}: {:?}", times[1]);
        worst = worst.max(times[1]);
        html
    };
    let list = timed(&mut b, "/models?sort=name");
    assert!(list.contains(r#"data-name="big""#));
    assert!(list.contains("1000+"), "large repositories' counts are capped");
    let first = timed(&mut b, "/models/big");
    assert!(first.contains(r#"data-name="v100000""#), "newest first");
    let next = &first[first.find("after=").expect("a next page")..];
    let after = &next["after=".len()..next.find('"').unwrap()];
    let second = timed(&mut b, &format!("/models/big?after={after}"));
    assert!(second.contains(r#"data-name="v99975""#));
    timed(&mut b, "/models/big?sort=oldest");
    timed(&mut b, "/models/big?q=v4242");
    timed(&mut b, "/models/big/v50000");
    timed(&mut b, "/models?sort=name&q=repo");
    timed(&mut b, "/");
    timed(&mut b, "/events");
    // Typically a few milliseconds; the bound leaves room for a busy machine.
    assert!(worst < Duration::from_millis(100), "slowest page took {worst:?}");
}

/// Every route of the dashboard's router, read from its source (crates/web/src/lib.rs), so a
/// page added there is in the isolation matrix below without anyone remembering to add it.
fn dashboard_routes() -> Vec<(&'static str, String)> {
    let source = include_str!("../crates/web/src/lib.rs");
    let mut routes = Vec::new();
    for line in source.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
        let path = line[".route(\"".len()..].split('"').next().unwrap().to_owned();
        for (method, call) in [("GET", "get("), ("POST", "post(")] {
            if line.contains(call) {
                routes.push((method, path.clone()));
            }
        }
    }
    assert!(routes.len() > 60, "the router's routes were not found in crates/web/src/lib.rs: {routes:?}");
    routes
}

/// Who may use a dashboard route of organization A's objects: the least role, or `None` for
/// routes that are not about an organization's objects (assets, sign-in, one's own account,
/// invitation links, which are capabilities held by whoever has the link). A route missing
/// here fails the matrix: decide who may use it when adding it.
fn least_role(method: &str, path: &str) -> Option<&'static str> {
    let public = ["/static/", "/favicon.ico", "/setup", "/login", "/logout", "/account", "/invitations/"];
    if public.iter().any(|p| path.starts_with(p)) {
        return None;
    }
    let admin_forms = ["/settings", "/settings/members", "/clusters/new", "/secrets/new"];
    Some(match (method, path) {
        ("GET", "/deployments/new" | "/deployments/{name}/edit") => "developer",
        ("GET", "/clusters/new" | "/clusters/{name}/edit" | "/secrets/new") => "admin",
        ("GET", p)
            if p == "/"
                || ["/models", "/bentos", "/deployments", "/settings", "/events", "/clusters", "/secrets"]
                    .iter()
                    .any(|prefix| p.starts_with(prefix)) =>
        {
            "guest"
        }
        ("POST", p) if admin_forms.contains(&p) => "admin",
        ("POST", p)
            if p.starts_with("/settings/members/") || p.starts_with("/clusters/") || p.starts_with("/secrets/") =>
        {
            "admin"
        }
        // A token of A's admin: only its owner or an admin may revoke it.
        ("POST", "/settings/tokens/{uid}/revoke") => "admin",
        ("POST", "/settings/tokens") => "guest",
        ("POST", p) if p.starts_with("/models/") || p.starts_with("/bentos/") || p.starts_with("/deployments/") => {
            "developer"
        }
        _ => panic!("{method} {path}: no least role in the dashboard's isolation matrix; add it to least_role"),
    })
}

/// A route with organization A's names in place of its parameters.
fn concrete_page(path: &str, a: &std::collections::BTreeMap<&str, String>) -> String {
    let kind = path.split('/').nth(1).unwrap_or("");
    let mut out = String::new();
    for seg in path.split('/').skip(1) {
        out.push('/');
        out.push_str(&match (kind, seg) {
            ("models", "{repo}") => a["model"].clone(),
            ("models", "{version}") => a["model_version"].clone(),
            ("bentos", "{repo}") => a["bento"].clone(),
            ("bentos", "{version}") => a["bento_version"].clone(),
            ("deployments", "{name}") => a["deployment"].clone(),
            ("clusters", "{name}") => "local".into(),
            ("secrets", "{name}") => a["secret"].clone(),
            ("settings", "{uid}") if path.contains("/invitations/") => a["invitation_uid"].clone(),
            ("settings", "{uid}") if path.contains("/tokens/") => a["token_uid"].clone(),
            ("settings", "{uid}") => a["member_uid"].clone(),
            ("account", "{uid}") => a["invitation_uid"].clone(),
            ("invitations", "{token}") => "0".repeat(43),
            (_, s) if s.starts_with('{') => panic!("no value for {s} in {path}: add it to the matrix"),
            (_, s) => s.into(),
        });
    }
    if path == "/deployments/new/versions" {
        out.push_str(&format!("?bento_repository={}", a["bento"]));
    }
    out
}

/// Form fields that would change A's objects if a route let them through.
fn hostile_fields(a: &std::collections::BTreeMap<&str, String>) -> Vec<(&'static str, String)> {
    [
        ("name", "stolen".to_owned()),
        ("description", "pwned".into()),
        ("invitee", "mallory@example.com".into()),
        ("role", "admin".into()),
        ("type", "env".into()),
        ("stage", "runtime".into()),
        ("item_key", "API_KEY".into()),
        ("item_sub_path", String::new()),
        ("item_value", "pwned-value".into()),
        ("bento_repository", a["bento"].clone()),
        ("bento_version", a["bento_version"].clone()),
        ("cluster", "local".into()),
        ("min_replicas", "1".into()),
        ("max_replicas", "1".into()),
        ("envs", "PWNED=1".into()),
        ("revision_uid", a["revision"].clone()),
        ("org", a["org_uid"].clone()),
        ("namespace", "stolen".into()),
        ("domain_suffix", "pwned.example".into()),
    ]
    .into()
}

/// `method url` as the signed-in `b`: a GET, or a POST of [`hostile_fields`] with `b`'s own
/// valid CSRF token.
fn request_as(b: &mut Browser, method: &str, url: &str, a: &std::collections::BTreeMap<&str, String>) -> Response {
    if method == "GET" {
        return b.get(url);
    }
    let csrf = b.csrf_for_tests();
    let hostile = hostile_fields(a);
    let mut fields: Vec<(&str, &str)> = vec![("csrf", csrf.as_str())];
    fields.extend(hostile.iter().map(|(k, v)| (*k, v.as_str())));
    b.post(url, &fields)
}

/// What A's admin sees of A's objects through the API; must read the same after everything.
fn org_fingerprint(http: &Http, a: &std::collections::BTreeMap<&str, String>) -> Vec<String> {
    let strip = |mut v: serde_json::Value| {
        for key in ["last_used_at", "status_updated_at", "replicas", "status"] {
            if let Some(o) = v.as_object_mut() {
                o.remove(key);
            }
        }
        v.to_string()
    };
    let mut out = vec![
        http.get(&format!("/api/v1/model_repositories/{}/models/{}", a["model"], a["model_version"])).text(),
        http.get(&format!("/api/v1/bento_repositories/{}/bentos/{}", a["bento"], a["bento_version"])).text(),
        strip(http.get(&format!("/api/v2/deployments/{}", a["deployment"])).json()),
        http.get(&format!("/api/v2/deployments/{}/revisions", a["deployment"])).text(),
        http.get(&format!("/api/v1/org_secrets/{}", a["secret"])).text(),
        http.get("/api/v1/org_secrets").json()["total"].to_string(),
        http.get("/api/v1/current_org").text(),
        strip(http.get("/api/v1/clusters/local").json()),
        http.get("/api/v2/deployments").json()["total"].to_string(),
    ];
    let tokens = http.get("/api/v1/api_tokens").json();
    out.extend(tokens["items"].as_array().unwrap().iter().map(|t| strip(t.clone())));
    out
}

/// Each member on the members page as an admin sees it: name and selected role.
fn members_and_roles(html: &str) -> Vec<String> {
    html.split(r#"data-testid="row" data-name=""#)
        .skip(1)
        .map(|row| {
            let row = &row[..row.find("</tr>").unwrap_or(row.len())];
            let name = row.split('"').next().unwrap();
            let role = row.split("<option").find(|o| o.contains("selected")).and_then(|o| o.split('"').nth(1));
            format!("{name}:{}", role.unwrap_or("?"))
        })
        .collect()
}

#[test]
fn no_page_or_form_lets_another_organization_or_a_lesser_role_see_or_change_anything() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    let mut admin = setup(&server);
    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    client.ok(&["push", &iris.bento]);
    client.ok(&["secret", "create", "alpha-secret-2d9b", "API_KEY=alpha-value-6a4f"]);
    let (bento, bento_version) = iris.bento.split_once(':').unwrap();
    api_model(&server, "alpha_model_7f3c", "alphav1");
    let created = http.post(
        "/api/v2/deployments",
        &json!({"bento": iris.bento, "name": "alpha-dep-5c1e", "secrets": ["alpha-secret-2d9b"]}),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(http.post("/api/v2/deployments/alpha-dep-5c1e/terminate", &json!({})).status, 200);
    let revisions = http.get("/api/v2/deployments/alpha-dep-5c1e/revisions").json();
    let token = http.post("/api/v1/api_tokens", &json!({"name": "alpha-token-8b2d", "scopes": ["api"]})).json();
    let r = admin.submit("/clusters/local/edit", "/clusters/local/edit", &[("description", "alpha-cluster-3a6e")]);
    assert_eq!(r.status, 303, "{}", r.text());
    let r = admin.submit("/settings", "/settings", &[("description", "alpha-org-9c4d")]);
    assert!(r.status == 303 || r.status == 200, "{}", r.text());
    // Members below admin, and an invitation still pending.
    let mut by_role = std::collections::BTreeMap::new();
    for role in ["guest", "developer"] {
        let user = format!("alpha{role}");
        server.admin(&["user", "create", &user, "--email", &format!("{user}@example.com"), "--role", role]);
        admin_with_env(&server, &["user", "set-password", &user], &[("YATAI_PASSWORD", PASSWORD)]);
        let (b, r) = login(&server, &user, PASSWORD);
        assert_eq!(r.status, 303, "{user} signs in: {}", r.text());
        by_role.insert(role, b);
    }
    let r = admin.submit(
        "/settings/members",
        "/settings/members",
        &[("invitee", "alpha-invitee@example.com"), ("role", "guest")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let members = admin.page("/settings/members");
    let member_uid = action_of(&members, "/settings/members/").split('/').nth(3).unwrap().to_owned();
    let invitation_uid = action_of(&members, "/settings/members/invitations/").split('/').nth(4).unwrap().to_owned();
    let org = http.get("/api/v1/current_org").json();
    let members_before = members_and_roles(&members);
    assert_eq!(members_before.len(), 3, "{members_before:?}");
    assert!(members_before.iter().all(|m| !m.ends_with(":?")), "{members_before:?}");

    let mut a = std::collections::BTreeMap::new();
    a.insert("bento", bento.to_owned());
    a.insert("bento_version", bento_version.to_owned());
    a.insert("model", "alpha_model_7f3c".to_owned());
    a.insert("model_version", "alphav1".to_owned());
    a.insert("deployment", "alpha-dep-5c1e".to_owned());
    a.insert("secret", "alpha-secret-2d9b".to_owned());
    a.insert("revision", revisions["items"][0]["uid"].as_str().unwrap().to_owned());
    a.insert("token_uid", token["uid"].as_str().unwrap().to_owned());
    a.insert("member_uid", member_uid);
    a.insert("invitation_uid", invitation_uid);
    a.insert("org_uid", org["uid"].as_str().unwrap().to_owned());
    let markers: Vec<String> =
        ["bento_version", "model", "deployment", "secret", "token_uid", "revision", "invitation_uid"]
            .iter()
            .map(|k| a[k].clone())
            .chain(
                [
                    "alpha-value-6a4f",
                    "alpha-token-8b2d",
                    "alpha-cluster-3a6e",
                    "alpha-org-9c4d",
                    "alphaguest",
                    "alpha-invitee",
                ]
                .map(String::from),
            )
            .collect();
    let before = org_fingerprint(&http, &a);

    let mut bob = other_org(&server);
    // bob's API token opens no page: the dashboard takes sessions only.
    let bob_token =
        http.with_token(server.admin(&["token", "create", "--name", "bob", "--user", "bob", "--org", "other"]).trim());
    let rank = |r: &str| ["guest", "developer", "admin"].iter().position(|x| *x == r).unwrap();
    let (mut cross, mut denied) = (0, 0);
    let routes = dashboard_routes();
    // Signing out last: the matrix needs bob's session until then.
    let (last, routes): (Vec<_>, Vec<_>) = routes.into_iter().partition(|(_, p)| p == "/logout");
    for (method, path) in routes.iter().chain(&last) {
        let url = concrete_page(path, &a);
        let need = least_role(method, path);
        // Another organization's admin: nothing of A's, whatever the status.
        let r = request_as(&mut bob, method, &url, &a);
        let text = r.text();
        // A name B sent may come back (a form keeps its input); nothing else of A's may.
        let sent = format!("{url} {:?}", if *method == "POST" { hostile_fields(&a) } else { Vec::new() });
        for m in markers.iter().filter(|m| !sent.contains(m.as_str())) {
            assert!(!text.contains(m.as_str()), "{method} {url} showed org A's {m:?} to org B ({}): {text}", r.status);
        }
        if need.is_some() && path.contains('{') && !path.starts_with("/clusters/") {
            assert!((400..500).contains(&r.status), "{method} {url} answered {} to org B: {text}", r.status);
        }
        cross += 1;
        if need.is_some() {
            let r = bob_token.request(method, &url, None);
            assert_eq!(r.status, 303, "{method} {url} with org B's API token: {}", r.text());
            assert!(!markers.iter().any(|m| r.text().contains(m.as_str())));
        }

        // A's members below the route's role: refused, with their own valid CSRF token.
        let Some(need) = need else { continue };
        for (role, member) in by_role.iter_mut() {
            if rank(role) >= rank(need) {
                continue;
            }
            let r = request_as(member, method, &url, &a);
            assert!(
                r.status == 403 || (r.status == 404 && path.starts_with("/settings/tokens/")),
                "{method} {url} answered A's {role} ({}): {}",
                r.status,
                r.text()
            );
            assert!(!r.text().contains("alpha-value-6a4f"));
            denied += 1;
        }
    }
    assert!(cross > 60, "only {cross} routes tried across organizations");
    assert!(denied > 30, "only {denied} requests checked for role");
    assert_eq!(org_fingerprint(&http, &a), before, "org A's objects changed");
    // bob did not join A, the invitation is still pending, and A's members keep their roles.
    let members = admin.page("/settings/members");
    assert!(!members.contains(r#"data-name="bob""#), "bob joined A: {members}");
    assert!(members.contains(r#"data-invitee="alpha-invitee@example.com""#), "the invitation was used: {members}");
    assert_eq!(members_and_roles(&members), members_before, "A's members changed");
    eprintln!("dashboard isolation matrix: {cross} routes tried by another organization, {denied} refusals by role");
}
