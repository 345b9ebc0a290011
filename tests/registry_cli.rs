//! The registry driven by the unmodified bentoml 1.4.40 CLI, against both
//! SQLite + local files and PostgreSQL + S3.

mod support;

use support::*;

fn assert_same_tree(a: &std::path::Path, b: &std::path::Path) {
    let (ta, tb) = (tree(a), tree(b));
    assert!(!ta.is_empty(), "{} is empty", a.display());
    assert_eq!(
        ta.keys().collect::<Vec<_>>(),
        tb.keys().collect::<Vec<_>>(),
        "different files in {} and {}",
        a.display(),
        b.display()
    );
    for (k, v) in &ta {
        assert!(v == &tb[k], "{k} differs between {} and {}", a.display(), b.display());
    }
}

backend_test! {
    fn cloud_login_reports_user_and_organization(backend: Backend) {
        let server = Server::start(backend);
        let client = server.client();
        let out = client.ok(&["cloud", "login", "--endpoint", &server.url, "--api-token", &server.token]);
        assert!(out.contains("Logged in as admin@localhost at default organization"), "{out}");
        let config = std::fs::read_to_string(client.home().join(".yatai.yaml")).unwrap();
        assert!(config.contains(&server.url), "{config}");
    }
}

backend_test! {
    fn wrong_token_is_refused_with_bad_credentials(backend: Backend) {
        let server = Server::start(backend);
        let client = Bentoml::new(&server.url, "yatai_not_a_real_token");
        let out = client.fails(&["cloud", "login", "--endpoint", &server.url, "--api-token", "yatai_not_a_real_token"]);
        assert!(out.contains("401"), "{out}");
        let tag = client.create_model("rejected", 1000);
        let out = client.fails(&["models", "push", &tag]);
        assert!(out.contains("401"), "{out}");
        assert!(server.stored_archives().is_empty());
    }
}

/// Pushes a model with one server configuration, pulls it into a fresh
/// home, and compares every file.
fn model_round_trip(backend: Backend, strategy: &str, size: usize) {
    let server = Server::start_with(ServerOptions::new(backend).args(&["--transmission-strategy", strategy]));
    let pusher = server.client();
    let tag = pusher.create_model("roundtrip", size);
    let out = pusher.ok(&["models", "push", &tag]);
    assert!(out.contains("Successfully pushed model"), "{out}");

    let version = server
        .http()
        .get(&format!("/api/v1/model_repositories/roundtrip/models/{}", tag.split_once(':').unwrap().1))
        .json();
    assert_eq!(version["upload_status"], "success");
    assert!(version["archive_digest"].as_str().unwrap().starts_with("sha256:"));

    let puller = server.client();
    let out = puller.ok(&["models", "pull", &tag]);
    assert!(out.contains("Successfully pulled model"), "{out}");
    assert_same_tree(&pusher.model_dir(&tag), &puller.model_dir(&tag));
    assert_eq!(server.stored_archives().len(), 1);
}

backend_test! {
    fn model_push_pull_proxy(backend: Backend) {
        model_round_trip(backend, "proxy", 3 << 20);
    }
}

backend_test! {
    fn model_push_pull_presigned(backend: Backend) {
        model_round_trip(backend, "presigned", 3 << 20);
    }
}

backend_test! {
    fn model_push_pull_multipart(backend: Backend) {
        // 230 MiB: three parts of the client's 100 MiB, the last one short.
        model_round_trip(backend, "multipart", 230 << 20);
    }
}

backend_test! {
    fn bento_push_and_pull_with_models_into_a_fresh_home(backend: Backend) {
        let server = Server::start(backend);
        let iris = iris_home();
        let pusher = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
        // The push uploads both models in parallel, then the bento.
        let out = pusher.ok(&["push", &iris.bento]);
        for m in &iris.models {
            assert!(out.contains(&format!("Successfully pushed model \"{m}\"")), "{out}");
        }
        assert!(out.to_lowercase().contains(&format!("successfully pushed bento \"{}\"", iris.bento)), "{out}");
        assert_eq!(server.stored_archives().len(), 3);

        let puller = server.client();
        let out = puller.ok(&["pull", &iris.bento, "--with-models"]);
        assert!(out.to_lowercase().contains("successfully pulled bento"), "{out}");
        assert_same_tree(&pusher.bento_dir(&iris.bento), &puller.bento_dir(&iris.bento));
        for m in &iris.models {
            assert_same_tree(&pusher.model_dir(m), &puller.model_dir(m));
        }

        // The registry knows which models the bento uses.
        let (name, version) = iris.bento.split_once(':').unwrap();
        let models = server.http().get(&format!("/api/v1/bento_repositories/{name}/bentos/{version}/models")).json();
        assert_eq!(models["total"], 2);
    }
}

backend_test! {
    fn pushing_an_unchanged_bento_skips_and_force_reuploads_nothing_new(backend: Backend) {
        let server = Server::start(backend);
        let iris = iris_home();
        let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
        client.ok(&["push", &iris.bento]);
        let pushes = |server: &Server| server.http().get("/api/v1/events?operation_name=pushed&count=100").json()["total"].as_i64().unwrap();
        let before = pushes(&server);

        let out = client.ok(&["push", &iris.bento]);
        assert!(out.to_lowercase().contains("skip"), "{out}");
        assert_eq!(pushes(&server), before, "an unchanged push uploaded something");

        let out = client.ok(&["push", &iris.bento, "--force"]);
        assert!(out.to_lowercase().contains("successfully pushed bento"), "{out}");
        // --force sends the bytes again; they are identical, so nothing new is stored.
        let events = server.http().get("/api/v1/events?operation_name=pushed&count=1").json();
        assert_eq!(events["items"][0]["info"]["result"], "unchanged", "{events}");
        assert_eq!(server.stored_archives().len(), 3);
    }
}

backend_test! {
    fn latest_resolves_to_the_newest_uploaded_version(backend: Backend) {
        let server = Server::start(backend);
        let client = server.client();
        let old = client.create_model("latest-test", 1000);
        client.ok(&["models", "push", &old]);
        let new = client.create_model("latest-test", 2000);
        client.ok(&["models", "push", &new]);

        let puller = server.client();
        let out = puller.ok(&["models", "pull", "latest-test:latest"]);
        assert!(out.contains("Successfully pulled"), "{out}");
        assert!(puller.model_dir(&new).exists(), "pulled the wrong version:\n{out}");
        assert!(!puller.model_dir(&old).exists());

        let got = server.http().get("/api/v1/model_repositories/latest-test/models/latest").json();
        assert_eq!(got["version"], new.split_once(':').unwrap().1);

        // bentoml pull name:latest sends `latest` literally.
        let iris = iris_home();
        let pusher = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
        pusher.ok(&["push", &iris.bento]);
        let fresh = server.client();
        let name = iris.bento.split_once(':').unwrap().0;
        let out = fresh.ok(&["pull", &format!("{name}:latest")]);
        assert!(out.to_lowercase().contains("successfully pulled bento"), "{out}");
        assert!(fresh.bento_dir(&iris.bento).exists());
    }
}
