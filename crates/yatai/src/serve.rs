//! `yatai serve`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::Rng;
use std::sync::Arc;

use yatai_app::{AppState, Targets, auth};
use yatai_core::deploy::DeployTarget;

use crate::config::ServeArgs;
use crate::local_target::{ApiTokenAccess, RuntimeFiles, RuntimeHosts};

pub async fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    args.resolve_paths()?;
    let store = args.db.connect().await?;
    let blobs = args.storage.open(&args.db.data_dir)?;
    let signing_key = signing_key(&store, &args.signing_key_file()).await?;
    let first_token = bootstrap(&store, &args).await?;
    ensure_operator_token(&store, &args).await?;

    // The same limits on every port: the API's and each deployment's endpoint.
    let limits = yatai_http_server::Limits {
        max_connections: args.max_connections.min(connection_budget()),
        header_timeout: args.client_header_timeout,
        body_idle_timeout: args.client_body_timeout,
        send_timeout: args.client_send_timeout,
    };
    let mut runtime_config = args.runtime_config()?;
    runtime_config.client_limits = limits;
    std::fs::create_dir_all(&runtime_config.root)
        .with_context(|| format!("cannot create the runtime directory {}", runtime_config.root.display()))?;
    let sink = Arc::new(yatai_app::deployments::DbStatusSink { store: store.clone() });
    let runtime = yatai_runtime::LocalRuntime::new(runtime_config.clone(), blobs.clone(), sink);
    let closed = runtime.prepare_dirs().context("cannot lay out the runtime directory")?;
    close_private_dirs(&args, &runtime_config).context("cannot close the data directory to other users")?;
    match (&runtime_config.replica_ids, args.replica_uids.trim()) {
        (Some(r), _) => tracing::info!(
            uids = %format!("{}-{}", r.first, r.last),
            "replicas run as users of their own, with the data directory closed to them"
        ),
        (None, "off") => tracing::warn!(
            "replicas run as the server's user (--replica-uids off): a deployment's code can read the database, \
             the URL-signing key and every artifact; see \"Isolation of deployments\" in the README"
        ),
        (None, _) => tracing::warn!(
            "the server does not run as root, so replicas run as its own user: a deployment's code can read the \
             database, the URL-signing key and every artifact. Run the server as root (replicas then run as users \
             of their own) or on Kubernetes to isolate deployments; see \"Isolation of deployments\" in the README"
        ),
    }
    for dir in closed {
        tracing::warn!(
            dir = %dir.display(),
            "replicas run as their own users but cannot search this directory, so they cannot reach the runtime or \
             environment directory below it: open it to others (chmod o+x) or move --runtime-dir/--env-dir"
        );
    }
    let targets =
        Targets::default().with_kind(runtime.clone()).with_connector(Arc::new(yatai_kube_target::KubeConnector));
    let cluster_key = yatai_app::clusters::ClusterKey::load_or_create(&args.cluster_key_file())?;
    let files = Arc::new(RuntimeFiles(runtime.clone()));
    let state =
        AppState::with_targets(store.clone(), blobs.clone(), &signing_key, args.app_config(), targets, Some(files));
    state.set_cluster_key(cluster_key);
    runtime.set_access_verifier(Arc::new(ApiTokenAccess { state: state.clone() }));
    let hosts = Arc::new(RuntimeHosts(runtime.clone()));
    let (app, _doc) = yatai_api::app_with(state.clone(), yatai_web::router(), Some(hosts));
    let app = yatai_web::html_not_found(app);
    let listener =
        tokio::net::TcpListener::bind(&args.bind).await.with_context(|| format!("cannot listen on {}", args.bind))?;
    let addr = listener.local_addr()?;
    let janitor = tokio::spawn(yatai_app::janitor::run(state.clone(), args.janitor_interval));

    tracing::info!(
        metadata = %args.db.describe(),
        artifacts = %blobs.describe(),
        runtime = %runtime.describe(),
        "yatai {} ready",
        env!("CARGO_PKG_VERSION")
    );
    {
        yatai_app::images::fail_interrupted(&state).await;
        // Before restoring: the deployments of Kubernetes clusters need their targets.
        match yatai_app::clusters::connect_stored(&state).await {
            Ok(n) if n > 0 => tracing::info!(clusters = n, "connected the Kubernetes clusters"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot read the Kubernetes clusters"),
        }
        let to_restore = yatai_app::deployments::prepare_restore(&state).await;
        let state = state.clone();
        tokio::spawn(async move { yatai_app::deployments::restore_all(&state, to_restore).await });
    }
    if let Some(token) = first_token {
        let endpoint = format!("http://{addr}");
        println!(
            "\nCreated the admin user {:?} in organization {:?}. Its API token, shown only now:\n\n    {token}\n\n\
             Log in with:\n\n    bentoml cloud login --endpoint {endpoint} --api-token {token}\n\n\
             It is also the setup token of the dashboard: open {endpoint}/ to create the administrator's password.\n",
            args.admin_name, args.org_name
        );
    }
    println!("yatai listening on http://{addr}");

    let handle = move |req: http::Request<yatai_http_server::IdleTimeout>, remote: std::net::SocketAddr| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(axum::extract::ConnectInfo(remote));
        let app = app.clone();
        async move { tower::ServiceExt::oneshot(app, req).await.unwrap_or_else(|e| match e {}) }
    };
    yatai_http_server::serve(listener, handle, limits, async {
        shutdown_signal().await;
        yatai_api::shutdown::begin();
    })
    .await?;
    janitor.abort();
    tracing::info!("stopping the deployments' replicas");
    runtime.shutdown().await;
    state.auth.flush_last_used().await;
    store.close().await;
    tracing::info!("yatai stopped");
    Ok(())
}

/// How many connections the process can hold: its open-file limit, raised to the hard limit,
/// less room for the database, archives, replicas' pipes and logs.
fn connection_budget() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a pointer to a live struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    (limit.rlim_cur as usize).saturating_sub(512).max(64)
}

/// The key that signs transfer URLs, from a file only the server can read.
/// Earlier versions kept it in the database (which a SQLite file exposes to
/// whoever can read it); such a key moves to the file, so URLs already
/// handed out stay valid, and leaves the database.
async fn signing_key(store: &yatai_store::Store, path: &Path) -> anyhow::Result<Vec<u8>> {
    const SETTING: &str = "url_signing_key";
    let hex_key = match std::fs::read_to_string(path) {
        Ok(text) => text.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = match store.get_setting(SETTING).await? {
                Some(k) => k,
                None => {
                    let mut fresh = [0u8; 32];
                    rand::rng().fill_bytes(&mut fresh);
                    hex::encode(fresh)
                }
            };
            yatai_app::clusters::write_private(path, key.as_bytes())
                .with_context(|| format!("cannot write the URL signing key to {}", path.display()))?;
            key
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read the URL signing key {}", path.display())),
    };
    let key = hex::decode(&hex_key).with_context(|| format!("the URL signing key in {} is corrupt", path.display()))?;
    if key.len() < 16 {
        anyhow::bail!("the URL signing key in {} is too short (at least 16 bytes, hex-encoded)", path.display());
    }
    store.delete_setting(SETTING).await?;
    Ok(key)
}

/// Closes the data directory to other users: only the server reads the
/// database, the archives, the build cache and the secrets. When replicas
/// run as their own users and the runtime or environment directory lies
/// inside it, the way to them stays searchable (0711: nothing can be
/// listed) and every other entry is closed.
fn close_private_dirs(args: &ServeArgs, runtime: &yatai_runtime::RuntimeConfig) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    let data = args.db.data_dir.canonicalize()?;
    let isolated = runtime.replica_ids.is_some();
    // Top-level entries of the data directory replicas must pass through.
    let passages: Vec<PathBuf> = [&runtime.root, &runtime.env_dir]
        .into_iter()
        .filter_map(|p| p.canonicalize().ok())
        .filter_map(|p| p.strip_prefix(&data).ok().and_then(|r| r.components().next()).map(|c| data.join(c)))
        .collect();
    set(&data, if isolated && !passages.is_empty() { 0o711 } else { 0o700 })?;
    if let Some(images) = args.app_config().image_builds {
        std::fs::create_dir_all(&images.cache_dir)?;
        set(&images.cache_dir, 0o700)?;
    }
    if let Some(dir) = args.storage.storage.as_deref().filter(|s| !s.contains("://")) {
        set(Path::new(dir), 0o700)?;
    }
    for entry in std::fs::read_dir(&data)? {
        let entry = entry?;
        let path = entry.path();
        let meta = entry.metadata()?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if passages.contains(&path) {
            // The runtime set the modes of its own directories; a directory
            // that merely holds them only needs to be searchable.
            if isolated && path != runtime.root.canonicalize()? && path != runtime.env_dir.canonicalize()? {
                set(&path, 0o711)?;
            }
            continue;
        }
        set(&path, mode & 0o700)?;
    }
    Ok(())
}

/// On a database with no admin: creates the organization, the admin user and
/// a token (the operator's `YATAI_INITIAL_API_TOKEN`, or a random one to
/// print). Returns the secret to print, if one was generated.
async fn bootstrap(store: &yatai_store::Store, args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let given = args.initial_api_token.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if let Some(t) = given
        && t.len() < 16
    {
        anyhow::bail!("YATAI_INITIAL_API_TOKEN is too short to be safe: use at least 16 random characters");
    }
    let secret = match given {
        Some(t) => auth::from_secret(t.to_owned()),
        None => auth::generate_token(),
    };
    let created = store
        .bootstrap_admin(&args.org_name, &args.admin_name, &args.admin_email, "initial", &secret.hash, &secret.hint)
        .await?;
    match (created, given) {
        (Some(_), Some(_)) => {
            tracing::info!(org = %args.org_name, admin = %args.admin_name, "created the admin user with the token from YATAI_INITIAL_API_TOKEN");
            Ok(None)
        }
        (Some(_), None) => Ok(Some(secret.secret)),
        (None, Some(_)) => {
            if store.find_token_identity(&secret.hash).await?.is_none() {
                tracing::warn!(
                    "YATAI_INITIAL_API_TOKEN is ignored: an admin already exists (create tokens with `yatai token create`)"
                );
            }
            Ok(None)
        }
        (None, None) => Ok(None),
    }
}

/// The name of the token `YATAI_OPERATOR_API_TOKEN` gives.
const OPERATOR_TOKEN_NAME: &str = "operator";

/// `YATAI_OPERATOR_API_TOKEN`: the admin's token named `operator`, scoped to
/// reading the registry, with that secret. Made when missing; the token of a
/// previous secret is deleted, so that rotating the Secret revokes the old one.
async fn ensure_operator_token(store: &yatai_store::Store, args: &ServeArgs) -> anyhow::Result<()> {
    let Some(given) = args.operator_api_token.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    if given.len() < 16 {
        anyhow::bail!("YATAI_OPERATOR_API_TOKEN is too short to be safe: use at least 16 random characters");
    }
    let secret = auth::from_secret(given.to_owned());
    if store.find_token_identity(&secret.hash).await?.is_some() {
        return Ok(());
    }
    let org = store
        .get_org_by_name(&args.org_name)
        .await?
        .with_context(|| format!("YATAI_OPERATOR_API_TOKEN: no organization {:?} (YATAI_ORG_NAME)", args.org_name))?;
    let admin = store
        .get_user_by_name(&args.admin_name)
        .await?
        .with_context(|| format!("YATAI_OPERATOR_API_TOKEN: no user {:?} (YATAI_ADMIN_NAME)", args.admin_name))?;
    for old in store.list_tokens(&org.uid, Some(&admin.uid), Some(OPERATOR_TOKEN_NAME)).await? {
        if old.name == OPERATOR_TOKEN_NAME {
            store.delete_token(&org.uid, &old.uid).await?;
        }
    }
    store
        .create_token(yatai_store::NewToken {
            org_uid: &org.uid,
            user_uid: &admin.uid,
            name: OPERATOR_TOKEN_NAME,
            description: "yatai operator: downloads bentos to build their images (YATAI_OPERATOR_API_TOKEN)",
            token_hash: &secret.hash,
            token_hint: &secret.hint,
            scopes: &[yatai_core::Scope::ReadOrganization.as_str().to_owned()],
            expires_at: None,
        })
        .await?;
    tracing::info!(org = %args.org_name, "made the operator's read-only token from YATAI_OPERATOR_API_TOKEN");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
