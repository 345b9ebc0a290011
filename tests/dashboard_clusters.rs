//! The dashboard's clusters pages in a real browser, against a real
//! Kubernetes control plane (the testbed: kwok nodes, yatai's CRDs, `yatai
//! operator`): an admin registers the cluster in the form — refused first,
//! with what to do, for an unreachable API server and a namespace that does
//! not exist — by reading the kubeconfig from a file; the cluster's page
//! says it is reachable, its version, CRDs, operator and domain suffix; a
//! deployment made in the deployment form on that cluster turns `running`
//! live with its Ingress URL; the cluster cannot be removed while it has the
//! deployment, and can once it is deleted. The kubeconfig is on no page.

mod support;

#[path = "support/browser.rs"]
mod browser;
#[path = "../crates/image-builder/tests/common/mod.rs"]
mod build_common;
#[path = "support/kube.rs"]
mod kube_support;

use std::time::Duration;

use browser::{Browser, js_str};
use kube_support::{SUFFIX, prepared_testbed, start_operator};
use serde_json::json;
use support::*;

const PASSWORD: &str = "correct horse battery";
/// How long the deployment may take to turn running (kwok makes pods Ready at once).
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);
/// The first image build on a machine fills the builder's cache.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

async fn on_page(b: &Browser, page: &str) {
    b.wait_for(&format!("main#main[data-page={page}]")).await;
}

/// Opens `path`, checks it is `page` without console errors or markup
/// problems, and saves a screenshot.
async fn visit(b: &Browser, path: &str, page: &str) {
    b.goto(path).await;
    on_page(b, page).await;
    b.assert_no_console_errors();
    let problems = b.page_problems().await;
    assert!(problems.is_empty(), "{page}: {problems:?}");
    b.screenshot(page).await;
}

async fn submit_to(b: &Browser, form: &str, page: &str) {
    b.submit(&format!("form[data-form={form}]")).await;
    on_page(b, page).await;
}

/// Submits a form the server answers with its errors (422): Chromium logs
/// that document's status as a failed load, which is expected here.
async fn submit_expecting_errors(b: &Browser, form: &str, page: &str) {
    b.assert_no_console_errors();
    submit_to(b, form, page).await;
    b.assert_no_console_errors_but(|e| e.kind == "log:network" && e.text.contains("status of 422"));
    b.clear_console_errors();
}

async fn field_error(b: &Browser, field: &str) -> String {
    b.text(&format!(".field-error[data-error-for={field}]")).await
}

fn row(name: &str) -> String {
    format!("[data-testid=row][data-name={}]", js_str(name))
}

/// Fills the cluster form's settings (not the kubeconfig).
async fn fill_cluster(b: &Browser, namespace: &str) {
    b.fill("form[data-form=cluster] [name=name]", "testbed").await;
    b.fill("form[data-form=cluster] [name=description]", "the test control plane").await;
    b.fill("form[data-form=cluster] [name=namespace]", namespace).await;
    b.fill("form[data-form=cluster] [name=operator_namespace]", "yatai").await;
    b.fill("form[data-form=cluster] [name=domain_suffix]", SUFFIX).await;
}

/// Chooses `path` in the file input `selector`, as a user picking a file does.
async fn choose_file(b: &Browser, selector: &str, path: &std::path::Path) {
    let found = b
        .call("Runtime.evaluate", json!({"expression": format!("document.querySelector({})", js_str(selector))}))
        .await;
    let object = found["result"]["objectId"].as_str().unwrap_or_else(|| panic!("no `{selector}`: {found}")).to_owned();
    b.call("DOM.setFileInputFiles", json!({"files": [path.display().to_string()], "objectId": object})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_registered_in_the_dashboard_runs_a_deployment_made_there() {
    let testbed = prepared_testbed("yatai").await;
    // A kubeconfig with a mark only it carries (the testbed's refers to its key by path).
    let marker = unique("kubeconfig-mark");
    let kubeconfig = format!("# {marker}\n{}", std::fs::read_to_string(testbed.kubeconfig()).unwrap());
    let scratch = Scratch::new("clusters-kubeconfig");
    let kubeconfig_file = scratch.path().join("testbed.kubeconfig");
    std::fs::write(&kubeconfig_file, &kubeconfig).unwrap();
    let server_line = kubeconfig.lines().find(|l| l.trim_start().starts_with("server: ")).unwrap();
    let unreachable = kubeconfig.replace(server_line, "    server: https://127.0.0.1:1");

    // The server builds images into a real registry (the image the pods run).
    let fixtures = build_common::fixtures();
    let registry = build_common::TestRegistry::start(None);
    let base = registry.push_base();
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).building_images(
        &registry.host(),
        &base,
        &build_common::shared_cache(),
        &fixtures.uv,
    ));
    let _operator = start_operator(testbed, "yatai");

    // A bento, pushed with the bentoml CLI, and its image built.
    let iris = iris_home();
    let cli = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    cli.ok(&["push", &iris.bento]);
    let (repo, version) = iris.bento.split_once(':').unwrap();
    let build = server
        .http()
        .post(&format!("/api/v1/bento_repositories/{repo}/bentos/{version}/image_builds"), &json!({"force": false}));
    assert_eq!(build.status, 200, "{}", build.text());
    let build_uid = build.json()["uid"].as_str().unwrap().to_owned();

    let mut b = Browser::launch().await.with_base(&server.url);
    b.timeout = Duration::from_secs(60);

    // ---- first-run setup: the admin ----
    b.set_up_admin(&server.token, "ada", PASSWORD).await;

    // ---- the list offers to add a cluster ----
    visit(&b, "/clusters", "clusters").await;
    b.click_and_wait("a[data-action=add-cluster]").await;
    on_page(&b, "cluster-new").await;
    for field in [
        "name",
        "description",
        "in_cluster",
        "kube_config",
        "context",
        "namespace",
        "operator_namespace",
        "image_registry",
        "domain_suffix",
    ] {
        assert_eq!(b.count(&format!("form[data-form=cluster] label[for={field}]")).await, 1, "label for {field}");
    }
    // The script shows the file input that reads a kubeconfig into the field.
    b.wait_until("!document.querySelector('[data-kubeconfig-file]').hidden").await;
    b.assert_no_console_errors();
    assert!(b.page_problems().await.is_empty(), "{:?}", b.page_problems().await);
    b.screenshot("cluster-new").await;

    // ---- an unreachable API server: refused, saying so; the kubeconfig is not sent back ----
    fill_cluster(&b, "yatai").await;
    b.fill("form[data-form=cluster] [name=kube_config]", &unreachable).await;
    submit_expecting_errors(&b, "cluster", "cluster-new").await;
    let error = field_error(&b, "kube_config").await;
    assert!(error.contains("cannot reach the Kubernetes API server"), "{error}");
    assert_eq!(b.prop("[name=name]", "value").await, "testbed", "the settings are kept");
    assert_eq!(b.prop("[name=kube_config]", "value").await, "", "the kubeconfig is not sent back");
    b.screenshot("cluster-new-unreachable").await;

    // ---- a namespace that does not exist: refused, saying how to create it ----
    fill_cluster(&b, "no-such-namespace").await;
    b.fill("form[data-form=cluster] [name=kube_config]", &kubeconfig).await;
    submit_expecting_errors(&b, "cluster", "cluster-new").await;
    let error = field_error(&b, "kube_config").await;
    assert!(error.contains("namespace no-such-namespace does not exist"), "{error}");
    assert!(error.contains("kubectl create namespace"), "{error}");
    assert!(!b.html().await.contains(&marker), "the kubeconfig came back");

    // ---- the real one, read from a file ----
    fill_cluster(&b, "yatai").await;
    choose_file(&b, "#kubeconfig_file", &kubeconfig_file).await;
    b.wait_until(&format!("document.getElementById('kube_config').value.includes({})", js_str(&marker))).await;
    b.wait_for_text("[data-kubeconfig-status]", "testbed.kubeconfig").await;
    submit_to(&b, "cluster", "cluster").await;
    assert!(b.current_url().await.contains("/clusters/testbed?notice="), "{}", b.current_url().await);
    b.wait_for_text("p.notice[role=status]", "Added cluster testbed").await;

    // ---- its page: settings and health ----
    assert_eq!(b.text("[data-testid=health-reachable]").await, "yes");
    let k8s_version = b.text("[data-testid=health-version]").await;
    assert!(k8s_version.starts_with("v1."), "{k8s_version}");
    assert_eq!(b.text("[data-testid=health-crds]").await, "installed");
    assert_eq!(b.text("[data-testid=health-operator]").await, "running");
    assert_eq!(b.text("[data-testid=health-domain]").await, SUFFIX);
    assert_eq!(b.text("h1 [data-testid=health]").await, "ready");
    b.wait_for("[data-testid=no-problems]").await;
    assert_eq!(b.text("[data-testid=namespace]").await, "yatai");
    assert!(b.text("[data-testid=connection]").await.contains("kubeconfig"));
    assert!(!b.html().await.contains(&marker), "the cluster's page shows the kubeconfig");
    b.assert_no_console_errors();
    assert!(b.page_problems().await.is_empty(), "{:?}", b.page_problems().await);
    b.screenshot("cluster").await;
    visit(&b, "/clusters", "clusters").await;
    assert_eq!(b.text(&format!("{} [data-testid=health]", row("testbed"))).await, "ready");
    b.screenshot("clusters-with-testbed").await;

    // ---- a deployment on it, made in the deployment form ----
    wait_for("the image build", BUILD_TIMEOUT, || {
        let got = server.http().get(&format!("/api/v1/image_builds/{build_uid}")).json();
        assert_ne!(got["status"], "failed", "{got:#}");
        (got["status"] == "success").then_some(())
    });
    visit(&b, &format!("/deployments/new?bento_repository={repo}&bento_version={version}"), "deployment-new").await;
    b.select("[name=cluster]", "testbed").await;
    b.fill("[name=name]", "iris-k8s").await;
    b.fill("[name=min_replicas]", "1").await;
    b.fill("[name=max_replicas]", "1").await;
    submit_to(&b, "deployment", "deployment").await;
    assert!(b.current_url().await.contains("/deployments/iris-k8s"), "{}", b.current_url().await);
    let js = "(s => s === 'running' || s === 'failed' ? s : null)(document.querySelector('[data-testid=status]').textContent.trim())";
    let seen = b.wait_until_for(js, "the status to turn running", DEPLOY_TIMEOUT).await;
    assert_eq!(seen, "running", "{}", b.text("[data-live-reason]").await);
    // The Ingress host appears on the open page, live, once the cluster publishes it.
    let expected = format!("http://iris-k8s-yatai.{SUFFIX}");
    let js =
        "(a => a ? a.getAttribute('href').replace(/\\/$/, '') : null)(document.querySelector('a[data-testid=url]'))";
    let url = b.wait_until_for(js, "the Ingress URL on the page", Duration::from_secs(60)).await;
    assert_eq!(url, expected.as_str());
    assert!(b.text("main").await.contains("testbed · namespace yatai"), "{}", b.text("main").await);
    b.assert_no_console_errors();
    b.screenshot("deployment-on-kubernetes").await;

    // ---- the cluster lists it, and is not removed while it has it ----
    visit(&b, "/clusters/testbed", "cluster").await;
    b.wait_for("[data-testid=deployment][data-name=iris-k8s]").await;
    b.click("button[data-dialog=confirm-remove]").await;
    b.wait_until("document.getElementById('confirm-remove').open").await;
    b.click_and_wait("#confirm-remove [data-action=confirm]").await;
    on_page(&b, "cluster").await;
    let notice = b.text("p.notice[role=status]").await;
    assert!(notice.starts_with("Not removed") && notice.contains("iris-k8s"), "{notice}");

    // ---- an edit that changes only the description does not need the kubeconfig again ----
    b.click_and_wait("a[data-action=edit]").await;
    on_page(&b, "cluster-edit").await;
    assert_eq!(b.prop("[name=kube_config]", "value").await, "");
    assert_eq!(b.prop("[name=namespace]", "value").await, "yatai");
    assert!(!b.html().await.contains(&marker), "the edit form shows the kubeconfig");
    b.screenshot("cluster-edit").await;
    b.fill("form[data-form=cluster] [name=description]", "kwok nodes").await;
    submit_to(&b, "cluster", "cluster").await;
    b.wait_for_text("p.notice[role=status]", "Saved").await;
    b.wait_for_text("[data-testid=settings]", "kwok nodes").await;

    // ---- at phone width ----
    b.set_viewport(375, 812, true).await;
    for (path, page) in [("/clusters", "clusters"), ("/clusters/testbed", "cluster"), ("/clusters/new", "cluster-new")]
    {
        b.goto(path).await;
        on_page(&b, page).await;
        let o = b.horizontal_overflow().await;
        assert!(o.viewport == 375 && o.over == 0, "{path} is wider than a 375 px phone: {o:?}");
        b.screenshot(&format!("{page}-phone")).await;
    }
    b.reset_viewport().await;

    // ---- once the deployment is deleted, the cluster is removed ----
    b.goto("/deployments/iris-k8s").await;
    on_page(&b, "deployment").await;
    b.click("button[data-dialog=confirm-delete]").await;
    b.wait_until("document.getElementById('confirm-delete').open").await;
    b.click_and_wait("#confirm-delete [data-action=confirm]").await;
    on_page(&b, "deployments").await;
    b.goto("/clusters/testbed").await;
    on_page(&b, "cluster").await;
    b.click("button[data-dialog=confirm-remove]").await;
    b.wait_until("document.getElementById('confirm-remove').open").await;
    b.click_and_wait("#confirm-remove [data-action=confirm]").await;
    on_page(&b, "clusters").await;
    b.wait_for_text("p.notice[role=status]", "Removed cluster testbed").await;
    assert_eq!(b.count(&row("testbed")).await, 0);
    b.assert_no_console_errors();

    // Nothing the server said or logged carries the kubeconfig.
    for path in ["/clusters", "/events", "/deployments", "/"] {
        b.goto(path).await;
        assert!(!b.html().await.contains(&marker), "{path} shows the kubeconfig");
    }
    assert!(!server.log_text().contains(&marker), "the kubeconfig is in the server's log");
}
