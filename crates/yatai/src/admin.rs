//! Administration subcommands. They work on the database directly, so they
//! also work while the server is down, and on the first start.

use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use yatai_app::auth::{KNOWN_SCOPES, generate_token};
use yatai_core::Timestamp;
use yatai_core::deploy::ClusterConnector;
use yatai_store::{MemberRole, NewToken, Store};

use crate::config::{DbArgs, StorageArgs};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown only once).
    Create {
        #[command(flatten)]
        db: DbArgs,
        /// A name to tell the token apart, e.g. "ci" or "laptop".
        #[arg(long)]
        name: String,
        /// The user the token acts as.
        #[arg(long, default_value = "admin")]
        user: String,
        #[arg(long, default_value = "default")]
        org: String,
        /// Comma-separated: api (everything the user may do), read_organization,
        /// write_organization, read_cluster, write_cluster.
        #[arg(long, default_value = "api", value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, e.g. 30d or 12h (default: never expires).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List an organization's tokens.
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, default_value = "default")]
        org: String,
    },
    /// Revoke a token by uid, or by name with --user.
    Revoke {
        #[command(flatten)]
        db: DbArgs,
        token: String,
        #[arg(long, default_value = "default")]
        org: String,
        /// When TOKEN is a name: whose token it is.
        #[arg(long, default_value = "admin")]
        user: String,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user and make them a member of an organization.
    Create {
        #[command(flatten)]
        db: DbArgs,
        name: String,
        #[arg(long, default_value = "")]
        email: String,
        #[arg(long, default_value = "default")]
        org: String,
        /// guest (read), developer (read and push), admin.
        #[arg(long, default_value = "developer")]
        role: String,
    },
    /// Set a user's dashboard password (read from YATAI_PASSWORD, else the
    /// first line of stdin), and sign them out of every browser.
    SetPassword {
        #[command(flatten)]
        db: DbArgs,
        name: String,
    },
}

#[derive(Subcommand)]
pub enum OrgCommand {
    Create {
        #[command(flatten)]
        db: DbArgs,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    List {
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Args)]
pub struct GcArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    storage: StorageArgs,
    /// Also delete objects in storage that no record knows (older than a day).
    #[arg(long)]
    strays: bool,
}

async fn org_by_name(store: &Store, name: &str) -> anyhow::Result<yatai_store::OrgRow> {
    store.get_org_by_name(name).await?.ok_or_else(|| anyhow!("no organization named {name:?} (see `yatai org list`)"))
}

async fn user_by_name(store: &Store, name: &str) -> anyhow::Result<yatai_store::UserRow> {
    store
        .get_user_by_name(name)
        .await?
        .ok_or_else(|| anyhow!("no user named {name:?} (create one with `yatai user create`)"))
}

pub async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { db, name, user, org, scopes, expires_in, description } => {
            let store = db.connect().await?;
            if let Some(bad) = scopes.iter().find(|s| !KNOWN_SCOPES.contains(&s.as_str())) {
                bail!("unknown scope {bad:?}; known scopes: {}", KNOWN_SCOPES.join(", "));
            }
            let org = org_by_name(&store, &org).await?;
            let user = user_by_name(&store, &user).await?;
            if store.member_role(&org.uid, &user.uid).await?.is_none() {
                bail!("user {:?} is not a member of organization {:?}", user.name, org.name);
            }
            let secret = generate_token();
            let expires_at = expires_in.map(|d| Timestamp::now().after(d));
            let row = store
                .create_token(NewToken {
                    org_uid: &org.uid,
                    user_uid: &user.uid,
                    name: &name,
                    description: &description,
                    token_hash: &secret.hash,
                    token_hint: &secret.hint,
                    scopes: &scopes,
                    expires_at,
                })
                .await?;
            eprintln!(
                "Created token {:?} (uid {}) for {} in {}; the secret is shown only now:",
                row.name, row.uid, user.name, org.name
            );
            println!("{}", secret.secret);
            Ok(())
        }
        TokenCommand::List { db, org } => {
            let store = db.connect().await?;
            let org = org_by_name(&store, &org).await?;
            let now = Timestamp::now();
            println!("{:<32}  {:<20}  {:<12}  {:<12}  {:<28}  LAST USED", "UID", "NAME", "USER", "HINT", "SCOPES");
            for t in store.list_tokens(&org.uid, None, None).await? {
                let last = t.last_used_at.map(|u| Timestamp(u).to_rfc3339()).unwrap_or_else(|| "never".into());
                let expired = if t.is_expired(now) { " (expired)" } else { "" };
                println!(
                    "{:<32}  {:<20}  {:<12}  {:<12}  {:<28}  {last}{expired}",
                    t.uid,
                    t.name,
                    t.user_name,
                    t.token_hint,
                    t.scope_list().join(",")
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { db, token, org, user } => {
            let store = db.connect().await?;
            let org = org_by_name(&store, &org).await?;
            let row = match store.get_token(&org.uid, &token).await? {
                Some(r) => r,
                None => {
                    let u = user_by_name(&store, &user).await?;
                    store
                        .list_tokens(&org.uid, Some(&u.uid), None)
                        .await?
                        .into_iter()
                        .find(|t| t.name == token)
                        .ok_or_else(|| anyhow!("no token with uid or name {token:?} for user {:?}", u.name))?
                }
            };
            store.delete_token(&org.uid, &row.uid).await?;
            println!("revoked token {:?} ({}); servers stop accepting it within 5 seconds", row.name, row.uid);
            Ok(())
        }
    }
}

pub async fn user(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Create { db, name, email, org, role } => {
            yatai_core::validate_name_part("user name", &name).map_err(|e| anyhow!("{e}"))?;
            let role = MemberRole::parse(&role)
                .ok_or_else(|| anyhow!("unknown role {role:?}: use guest, developer or admin"))?;
            let store = db.connect().await?;
            let org = org_by_name(&store, &org).await?;
            let user = match store.get_user_by_name(&name).await? {
                Some(u) => u,
                None => store.create_user(&name, &email, None, false).await?,
            };
            store.set_member(&org.uid, &user.uid, role).await?;
            println!("user {:?} is a {} of organization {:?}", user.name, role.as_str(), org.name);
            Ok(())
        }
        UserCommand::SetPassword { db, name } => {
            let password = match std::env::var("YATAI_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            if let Some(why) = yatai_web::password::check_new(&password) {
                bail!("password refused: {why}");
            }
            let store = db.connect().await?;
            let user = user_by_name(&store, &name).await?;
            let hash = yatai_web::password::hash(&password).await.map_err(|e| anyhow!("cannot hash: {e}"))?;
            store.set_password(&user.uid, &hash).await?;
            let signed_out = store.delete_user_sessions(&user.uid, None).await?;
            println!("set the password of {:?}; signed out {signed_out} session(s)", user.name);
            Ok(())
        }
    }
}

pub async fn org(cmd: OrgCommand) -> anyhow::Result<()> {
    match cmd {
        OrgCommand::Create { db, name, description } => {
            yatai_core::validate_name_part("organization name", &name).map_err(|e| anyhow!("{e}"))?;
            let store = db.connect().await?;
            let org = store.create_org(&name, &description).await?;
            println!("created organization {:?} ({})", org.name, org.uid);
            Ok(())
        }
        OrgCommand::List { db } => {
            let store = db.connect().await?;
            for o in store.list_orgs().await? {
                println!("{}  {}", o.uid, o.name);
            }
            Ok(())
        }
    }
}

pub async fn gc(args: GcArgs) -> anyhow::Result<()> {
    let store = args.db.connect().await?;
    let blobs = args.storage.open(&args.db.data_dir)?;
    // The sweep signs no URL: it needs no signing key.
    let state = yatai_app::AppState::new(store, blobs, b"unused: gc signs nothing", Default::default());
    let report = yatai_app::janitor::sweep(&state, args.strays).await;
    println!(
        "removed {} abandoned uploads, {} unreferenced archives, {} stray objects, {} temporary files of interrupted uploads",
        report.uploads, report.blobs, report.strays, report.partials
    );
    Ok(())
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Register a Kubernetes cluster (checked against the cluster first).
    Add {
        #[command(flatten)]
        db: DbArgs,
        name: String,
        /// The kubeconfig file (its content is stored encrypted).
        #[arg(long, conflicts_with = "in_cluster")]
        kubeconfig: Option<std::path::PathBuf>,
        /// The kubeconfig context (default: its current context).
        #[arg(long)]
        context: Option<String>,
        /// Use the server's own service account (yatai runs in that cluster).
        #[arg(long)]
        in_cluster: bool,
        #[arg(long, default_value = "yatai")]
        namespace: String,
        #[arg(long)]
        image_registry: Option<String>,
        #[arg(long)]
        domain_suffix: Option<String>,
        /// The operator's namespace (default: wherever its Lease is found).
        #[arg(long)]
        operator_namespace: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = "default")]
        org: String,
        /// The key that seals credentials (default: DATA_DIR/secrets/cluster.key).
        #[arg(long, env = "YATAI_CLUSTER_KEY_FILE")]
        cluster_key_file: Option<std::path::PathBuf>,
    },
    /// List an organization's clusters.
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, default_value = "default")]
        org: String,
    },
    /// Remove a cluster that has no deployments.
    Remove {
        #[command(flatten)]
        db: DbArgs,
        name: String,
        #[arg(long, default_value = "default")]
        org: String,
    },
}

fn admin_state(
    store: Store,
    db: &DbArgs,
    connector: Option<std::sync::Arc<dyn ClusterConnector>>,
) -> yatai_app::AppState {
    let blobs = yatai_blob::BlobStore::local(db.data_dir.join("artifacts"), false).expect("local blob store");
    let mut targets = yatai_app::Targets::default();
    if let Some(c) = connector {
        targets = targets.with_connector(c);
    }
    yatai_app::AppState::with_targets(
        store,
        blobs,
        b"unused: cluster commands sign nothing",
        Default::default(),
        targets,
        None,
    )
}

pub async fn cluster(
    cmd: ClusterCommand,
    connector: Option<std::sync::Arc<dyn ClusterConnector>>,
) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Add {
            db,
            name,
            kubeconfig,
            context,
            in_cluster,
            namespace,
            image_registry,
            domain_suffix,
            operator_namespace,
            description,
            org,
            cluster_key_file,
        } => {
            let kubeconfig = match &kubeconfig {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .map_err(|e| anyhow!("cannot read the kubeconfig {}: {e}", p.display()))?,
                ),
                None => None,
            };
            let store = db.connect().await?;
            let org = org_by_name(&store, &org).await?;
            let key_file = cluster_key_file.unwrap_or_else(|| db.data_dir.join("secrets").join("cluster.key"));
            let state = admin_state(store, &db, connector);
            state.set_cluster_key(yatai_app::clusters::ClusterKey::load_or_create(&key_file)?);
            let input = yatai_app::clusters::NewClusterInput {
                name,
                description,
                kubeconfig,
                in_cluster,
                context,
                namespace: Some(namespace),
                image_registry,
                domain_suffix,
                operator_namespace,
            };
            let v = yatai_app::clusters::add_in_org(&state, &org.uid, None, input)
                .await
                .map_err(|e| anyhow!("{}", e.message()))?;
            println!(
                "registered cluster {:?} in {:?}; a running server connects to it when restarted",
                v.row.name, org.name
            );
            Ok(())
        }
        ClusterCommand::List { db, org } => {
            let store = db.connect().await?;
            let org = org_by_name(&store, &org).await?;
            println!("{:<24}  {:<12}  {:<16}  DOMAIN SUFFIX", "NAME", "KIND", "NAMESPACE");
            for c in store.list_clusters(&org.uid).await? {
                let s: yatai_app::clusters::ClusterSettings = serde_json::from_str(&c.config).unwrap_or_default();
                println!(
                    "{:<24}  {:<12}  {:<16}  {}",
                    c.name,
                    c.kind,
                    s.namespace,
                    s.domain_suffix.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        ClusterCommand::Remove { db, name, org } => {
            let store = db.connect().await?;
            let org = org_by_name(&store, &org).await?;
            let state = admin_state(store, &db, None);
            yatai_app::clusters::remove_in_org(&state, &org.uid, &name)
                .await
                .map_err(|e| anyhow!("{}", e.message()))?;
            println!("removed cluster {name:?} from {:?}", org.name);
            Ok(())
        }
    }
}
