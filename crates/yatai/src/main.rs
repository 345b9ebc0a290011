//! `yatai`: one binary, several roles. `yatai serve` runs the API and the
//! registry; the other subcommands administer the same database.

mod admin;
mod backup;
mod config;
mod local_target;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "yatai", version, about = "A self-hosted registry and deployer for BentoML models")]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one object per line,
    /// with the request's id, method, path and acting user) for log collectors.
    #[arg(long, global = true, env = "YATAI_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; boxing `Serve` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the server: API, registry and artifact transfer, on one port.
    Serve(config::ServeArgs),
    /// Build a bento into an OCI image and push it to a registry, without a
    /// Docker daemon. The last line of stdout is the pushed reference.
    Build(Box<yatai_build::BuildArgs>),
    /// yatai's own container image, built and pushed without a Dockerfile or a daemon.
    #[command(subcommand)]
    Image(Box<yatai_build::own_image::ImageCommand>),
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// Create users and add them to organizations.
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Create and list organizations.
    #[command(subcommand)]
    Org(admin::OrgCommand),
    /// Register, list and remove Kubernetes clusters.
    #[command(subcommand)]
    Cluster(admin::ClusterCommand),
    /// Delete abandoned uploads and archives nothing refers to, now.
    Gc(admin::GcArgs),
    /// Write the metadata and every archive (and, with --include-keys, the server's keys) to one
    /// file, while the server runs.
    Backup(backup::BackupArgs),
    /// Restore a backup into an empty data directory, database or bucket.
    Restore(backup::RestoreArgs),
    /// Bring the database schema up to date and exit.
    Migrate(config::DbArgs),
    /// Print the CustomResourceDefinitions (BentoDeployment, BentoRequest, Bento) as YAML,
    /// for `kubectl apply -f -`.
    Crds(CrdsArgs),
    /// Run the Kubernetes controllers and the conversion webhook.
    Operator(Box<yatai_operator::OperatorArgs>),
}

#[derive(clap::Args)]
struct CrdsArgs {
    /// Point the conversion webhook at this URL instead of the operator's Service (the
    /// operator rewrites it when it starts anyway).
    #[arg(long)]
    webhook_url: Option<String>,
    /// The operator's namespace, where its Service `yatai-operator` is.
    #[arg(long, default_value = "yatai-system")]
    operator_namespace: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("YATAI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_format == "json" {
        // The current span's fields at the top level (request id, method, path, user).
        logs.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        logs.init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Build(args) => yatai_build::run(*args).await,
            Command::Image(cmd) => yatai_build::own_image::run_image(*cmd).await,
            Command::Token(cmd) => admin::token(cmd).await,
            Command::User(cmd) => admin::user(cmd).await,
            Command::Org(cmd) => admin::org(cmd).await,
            Command::Gc(args) => admin::gc(args).await,
            Command::Backup(args) => backup::backup(args).await,
            Command::Restore(args) => backup::restore(args).await,
            Command::Cluster(cmd) => {
                admin::cluster(cmd, Some(std::sync::Arc::new(yatai_kube_target::KubeConnector))).await
            }
            Command::Crds(args) => {
                use yatai_kube_api::crds::{self, WebhookEndpoint};
                let webhook = match args.webhook_url {
                    Some(url) => WebhookEndpoint::Url(url),
                    None => {
                        WebhookEndpoint::Service { namespace: args.operator_namespace, name: "yatai-operator".into() }
                    }
                };
                print!("{}", crds::to_yaml(&crds::all(&webhook)));
                Ok(())
            }
            Command::Operator(args) => yatai_operator::run(*args).await,
            Command::Migrate(db) => {
                let store = db.connect().await?;
                println!("database schema is up to date ({})", db.describe());
                store.close().await;
                Ok(())
            }
        }
    })
}
