//! `yatai serve`.

use anyhow::Context;
use rand::Rng;
use yatai_api::{AppState, auth};

use crate::config::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let store = args.db.connect().await?;
    let blobs = args.storage.open(&args.db.data_dir)?;
    let signing_key = {
        let mut fresh = [0u8; 32];
        rand::rng().fill_bytes(&mut fresh);
        hex::decode(store.get_or_init_setting("url_signing_key", &hex::encode(fresh)).await?)
            .context("the stored URL signing key is corrupt")?
    };
    let first_token = bootstrap(&store, &args).await?;

    let runtime_config = args.runtime_config();
    std::fs::create_dir_all(&runtime_config.root)
        .with_context(|| format!("cannot create the runtime directory {}", runtime_config.root.display()))?;
    let sink = std::sync::Arc::new(yatai_api::deployments::DbStatusSink { store: store.clone() });
    let runtime = yatai_runtime::LocalRuntime::new(runtime_config, blobs.clone(), sink);
    let state =
        AppState::with_runtime(store.clone(), blobs.clone(), &signing_key, args.api_config(), Some(runtime.clone()));
    let (app, _doc) = yatai_api::app_with(state.clone(), yatai_web::router());
    let app = yatai_web::html_not_found(app);
    let listener =
        tokio::net::TcpListener::bind(&args.bind).await.with_context(|| format!("cannot listen on {}", args.bind))?;
    let addr = listener.local_addr()?;
    let janitor = tokio::spawn(yatai_api::janitor::run(state.clone(), args.janitor_interval));

    tracing::info!(
        metadata = %args.db.describe(),
        artifacts = %blobs.describe(),
        runtime = %runtime.describe(),
        "yatai {} ready",
        env!("CARGO_PKG_VERSION")
    );
    {
        yatai_api::images::fail_interrupted(&state).await;
        let to_restore = yatai_api::deployments::prepare_restore(&state).await;
        let state = state.clone();
        tokio::spawn(async move { yatai_api::deployments::restore_all(&state, to_restore).await });
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

    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(async {
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
