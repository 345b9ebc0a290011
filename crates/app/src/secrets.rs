//! Secrets: an organization's named values for its deployments, as
//! environment variables or files (`bentoml secret …`, `bentoml deployment
//! create --secret NAME`).
//!
//! Values are write-only. They are sealed with the server's key
//! ([`crate::clusters::ClusterKey`], kept outside the database; the row's uid
//! is the associated data) before they reach the store, and opened only by
//! [`open_for_deployment`], when a deploy target is about to apply a
//! revision, and by [`replace_keeping`], to seal the kept values again with
//! the new ones. No view, event or log line carries one: what is shown is
//! the keys, the type, the stage and the path.
//!
//! Any member may read the keys; a developer may attach a secret to a
//! deployment; only an admin creates, replaces or deletes one. A secret used
//! by a deployment cannot be deleted; replacing it rolls those deployments.

use serde::{Deserialize, Serialize};
use serde_json::json;
use yatai_core::deploy::Desired;
use yatai_core::secret::{DeploySecret, SecretContent, SecretItem, SecretType, check_content, check_secret_name};
use yatai_store::{NewSecret, SecretChange, SecretRow};

use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// A secret's content as a client sends it (values included).
#[derive(Debug, Clone)]
pub struct ContentInput {
    pub kind: String,
    pub stage: Option<String>,
    pub path: Option<String>,
    pub items: Vec<SecretItem>,
}

/// An item of a replacement whose value may be left out: `None` keeps the
/// value the key has now (the dashboard's form, which never shows values).
#[derive(Clone, PartialEq, Eq)]
pub struct KeptItem {
    pub key: String,
    pub sub_path: Option<String>,
    pub value: Option<String>,
}

impl std::fmt::Debug for KeptItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptItem")
            .field("key", &self.key)
            .field("sub_path", &self.sub_path)
            .field("value", &self.value.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

/// A secret's new content in which an item's value may be left out to keep it.
#[derive(Debug, Clone)]
pub struct KeepingInput {
    pub kind: String,
    pub stage: Option<String>,
    pub path: Option<String>,
    pub items: Vec<KeptItem>,
}

/// An item as shown: its key and where it is mounted, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemKey {
    pub key: String,
    #[serde(default)]
    pub sub_path: Option<String>,
}

/// A secret as shown.
#[derive(Debug, Clone)]
pub struct SecretView {
    pub row: SecretRow,
    pub items: Vec<ItemKey>,
}

impl SecretView {
    fn of(row: SecretRow) -> SecretView {
        let items = serde_json::from_str(&row.items).unwrap_or_default();
        SecretView { row, items }
    }
}

fn not_found(name: &str) -> AppError {
    AppError::not_found(format!(
        "secret {:?} not found in this organization (`bentoml secret list` lists them)",
        name.chars().take(70).collect::<String>()
    ))
}

fn check(input: ContentInput) -> AppResult<SecretContent> {
    check_content(&input.kind, input.stage.as_deref(), input.path.as_deref(), input.items)
        .map_err(|(field, message)| AppError::invalid_field(field, message))
}

fn keys_json(content: &SecretContent) -> String {
    let keys: Vec<ItemKey> =
        content.items.iter().map(|i| ItemKey { key: i.key.clone(), sub_path: i.sub_path.clone() }).collect();
    serde_json::to_string(&keys).expect("keys serialise")
}

fn seal(state: &AppState, uid: &str, content: &SecretContent) -> AppResult<String> {
    let plain = items_json(&content.items);
    Ok(state.cluster_key()?.seal_bytes(uid, &plain))
}

fn items_json(items: &[SecretItem]) -> Vec<u8> {
    serde_json::to_vec(items).expect("items serialise")
}

/// What an event says about a secret: never a value.
fn event_info(content: &SecretContent) -> serde_json::Value {
    json!({
        "type": content.kind.as_str(),
        "stage": content.stage.as_str(),
        "keys": content.items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
    })
}

pub async fn list(
    state: &AppState,
    caller: &Caller,
    search: Option<&str>,
    start: i64,
    count: i64,
) -> AppResult<(Vec<SecretView>, i64)> {
    caller.require(Permission::ReadCluster)?;
    let (rows, total) = state.store.list_secrets(&caller.org.uid, search, start.max(0), count.clamp(1, 1000)).await?;
    Ok((rows.into_iter().map(SecretView::of).collect(), total))
}

pub async fn get(state: &AppState, caller: &Caller, name: &str) -> AppResult<SecretView> {
    caller.require(Permission::ReadCluster)?;
    let row = state.store.get_secret(&caller.org.uid, name).await?.ok_or_else(|| not_found(name))?;
    Ok(SecretView::of(row))
}

/// The deployments (`namespace/name`) that use a secret.
pub async fn used_by(state: &AppState, caller: &Caller, name: &str) -> AppResult<Vec<String>> {
    caller.require(Permission::ReadCluster)?;
    Ok(state.store.deployments_using_secret(&caller.org.uid, name).await?.into_iter().map(|(_, n)| n).collect())
}

pub async fn create(
    state: &AppState,
    caller: &Caller,
    name: &str,
    description: Option<&str>,
    input: ContentInput,
) -> AppResult<SecretView> {
    caller.require(Permission::Admin)?;
    check_secret_name(name).map_err(|m| AppError::invalid_field("name", m))?;
    let description = description.unwrap_or("");
    crate::registry::check_fields(Some(description), None)?;
    let content = check(input)?;
    let uid = yatai_store::new_uid();
    let sealed = seal(state, &uid, &content)?;
    let row = state
        .store
        .create_secret(NewSecret {
            uid: &uid,
            org_uid: &caller.org.uid,
            name,
            description,
            kind: content.kind.as_str(),
            stage: content.stage.as_str(),
            path: content.path.as_deref(),
            items: &keys_json(&content),
            sealed: &sealed,
            creator_uid: Some(&caller.user.uid),
        })
        .await?;
    crate::registry::record(state, caller, "created", "secret", name, event_info(&content)).await;
    Ok(SecretView::of(row))
}

/// Replaces a secret's content (values included), then rolls the running
/// deployments that use it so that their replicas receive the new values.
pub async fn replace(
    state: &AppState,
    caller: &Caller,
    name: &str,
    description: Option<&str>,
    input: ContentInput,
) -> AppResult<SecretView> {
    caller.require(Permission::Admin)?;
    let row = state.store.get_secret(&caller.org.uid, name).await?.ok_or_else(|| not_found(name))?;
    replace_row(state, caller, &row, description, input, None).await
}

/// Replaces `row`'s content; with `if_updated_at`, only if nobody replaced it since it was read.
async fn replace_row(
    state: &AppState,
    caller: &Caller,
    row: &yatai_store::SecretRow,
    description: Option<&str>,
    input: ContentInput,
    if_updated_at: Option<Option<i64>>,
) -> AppResult<SecretView> {
    let name = row.name.as_str();
    crate::registry::check_fields(description, None)?;
    let content = check(input)?;
    let sealed = seal(state, &row.uid, &content)?;
    state
        .store
        .update_secret(
            &caller.org.uid,
            &row.uid,
            SecretChange {
                description,
                kind: content.kind.as_str(),
                stage: content.stage.as_str(),
                path: content.path.as_deref(),
                items: &keys_json(&content),
                sealed: &sealed,
                if_updated_at,
            },
        )
        .await?;
    crate::registry::record(state, caller, "updated", "secret", name, event_info(&content)).await;
    for (uid, shown) in state.store.deployments_using_secret(&caller.org.uid, name).await? {
        let Some(d) = state.store.get_deployment_by_uid(&uid).await? else { continue };
        if d.desired != Desired::Running || d.is_external() {
            continue;
        }
        if let Err(e) = crate::deployments::apply(state, &d).await {
            tracing::warn!(deployment = %shown, secret = %name, error = %e, "cannot roll a deployment to a replaced secret");
        }
    }
    let row = state.store.get_secret(&caller.org.uid, name).await?.ok_or_else(|| not_found(name))?;
    Ok(SecretView::of(row))
}

/// Replaces a secret's content as [`replace`] does, except that an item
/// without a value keeps the value its key has now. A key the secret does
/// not have yet needs a value; a key left out is removed.
pub async fn replace_keeping(
    state: &AppState,
    caller: &Caller,
    name: &str,
    description: Option<&str>,
    input: KeepingInput,
) -> AppResult<SecretView> {
    caller.require(Permission::Admin)?;
    let row = state.store.get_secret(&caller.org.uid, name).await?.ok_or_else(|| not_found(name))?;
    // Opened only when a value is to be kept: new values for every key
    // replace even a secret whose stored values cannot be opened any more.
    let stored =
        if input.items.iter().any(|i| i.value.is_none()) { open_row(state, &row).await?.0.items } else { Vec::new() };
    let items = fill_kept(input.items, &stored)?;
    let input = ContentInput { kind: input.kind, stage: input.stage, path: input.path, items };
    // The kept values are those read above: refused if the secret was replaced since.
    replace_row(state, caller, &row, description, input, Some(row.updated_at)).await
}

/// The items of a replacement with the values left out taken from `stored`
/// (by key); a new key without a value is refused, naming it.
fn fill_kept(items: Vec<KeptItem>, stored: &[SecretItem]) -> AppResult<Vec<SecretItem>> {
    let mut missing = Vec::new();
    let filled: Vec<SecretItem> = items
        .into_iter()
        .filter_map(|i| {
            let value = match i.value {
                Some(v) => v,
                None => match stored.iter().find(|s| s.key == i.key) {
                    Some(s) => s.value.clone(),
                    None => {
                        missing.push(format!("{:?}", i.key.chars().take(60).collect::<String>()));
                        return None;
                    }
                },
            };
            Some(SecretItem { key: i.key, sub_path: i.sub_path, value })
        })
        .collect();
    if !missing.is_empty() {
        return Err(AppError::invalid_field(
            "items",
            format!(
                "{} {} new: give {} a value (an empty value keeps the stored value of a key the secret already has)",
                if missing.len() == 1 { "key" } else { "keys" },
                missing.join(", "),
                if missing.len() == 1 { "it" } else { "each" },
            ),
        ));
    }
    Ok(filled)
}

/// For each secret of the organization that deployments use, those
/// deployments (`namespace/name`).
pub async fn usage(state: &AppState, caller: &Caller) -> AppResult<std::collections::BTreeMap<String, Vec<String>>> {
    caller.require(Permission::ReadCluster)?;
    Ok(state.store.secrets_usage(&caller.org.uid).await?)
}

pub async fn delete(state: &AppState, caller: &Caller, name: &str) -> AppResult<SecretView> {
    caller.require(Permission::Admin)?;
    let row = state.store.get_secret(&caller.org.uid, name).await?.ok_or_else(|| not_found(name))?;
    state.store.delete_secret(&caller.org.uid, &row.uid).await?;
    crate::registry::record(state, caller, "deleted", "secret", name, serde_json::Value::Null).await;
    Ok(SecretView::of(row))
}

/// The secret names a deployment configuration gives, checked: each must
/// be a secret of the caller's organization (another organization's name
/// is refused exactly as an unknown one). Returns the keys of the `env`
/// items replicas receive, which provide environment variables the bento
/// requires. Both kinds of target deliver secrets: the local one into the
/// replicas' environment and home, a Kubernetes cluster through Secrets the
/// pods and the operator's build refer to.
pub async fn check_attached(state: &AppState, org_uid: &str, names: &[String]) -> AppResult<Vec<String>> {
    let mut env_keys = Vec::new();
    let mut unknown = Vec::new();
    for name in names {
        match state.store.get_secret(org_uid, name).await? {
            Some(row) => {
                let view = SecretView::of(row);
                let runtime = view.row.stage != yatai_core::secret::SecretStage::Build;
                if view.row.kind == SecretType::MountFile && !runtime {
                    return Err(AppError::invalid_field(
                        "secrets",
                        format!(
                            "secret {name:?} holds files for the build only, and builds receive only environment                              variables: give build-time values as an env secret (e.g. UV_INDEX_URL for a private                              package index), or make its stage runtime or all"
                        ),
                    ));
                }
                // A build-only secret never reaches the replicas' environment.
                if view.row.kind == SecretType::Env && runtime {
                    env_keys.extend(view.items.into_iter().map(|i| i.key));
                }
            }
            None => unknown.push(format!("{:?}", name.chars().take(70).collect::<String>())),
        }
    }
    if !unknown.is_empty() {
        return Err(AppError::invalid_field(
            "secrets",
            format!(
                "secret{} {} not found in this organization; create {} with `bentoml secret create`",
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", "),
                if unknown.len() == 1 { "it" } else { "them" }
            ),
        ));
    }
    Ok(env_keys)
}

/// Opens the secrets a deployment names, for its target (every stage: the
/// target gives replicas the runtime ones and its builds the build ones).
/// Called just before a spec is applied; the result lives in memory only.
pub async fn open_for_deployment(state: &AppState, org_uid: &str, names: &[String]) -> AppResult<Vec<DeploySecret>> {
    let mut out = Vec::new();
    for name in names {
        let row = state.store.get_secret(org_uid, name).await?.ok_or_else(|| {
            AppError::conflict(format!(
                "secret {name:?}, which this deployment uses, no longer exists; create it again or update the \
                 deployment without it"
            ))
        })?;
        let (content, revision) = open_row(state, &row).await?;
        out.push(DeploySecret { name: row.name.clone(), revision, content });
    }
    Ok(out)
}

/// A secret's content and its revision (a digest of the sealed bytes).
async fn open_row(state: &AppState, row: &SecretRow) -> AppResult<(SecretContent, String)> {
    let broken = || {
        AppError::internal(format!(
            "the values of secret {:?} cannot be opened: the server's cluster key (--cluster-key-file, by default \
             DATA_DIR/secrets/cluster.key) is not the one they were sealed with (a database restored from a backup \
             taken without --include-keys needs the original cluster.key back), or they were altered; replace them \
             with `bentoml secret apply`",
            row.name
        ))
    };
    let sealed = state.store.secret_sealed(&row.uid).await?.ok_or_else(|| not_found(&row.name))?;
    let plain = state.cluster_key()?.open_bytes(&row.uid, &sealed).ok_or_else(broken)?;
    let items: Vec<SecretItem> = serde_json::from_slice(&plain).map_err(|_| broken())?;
    let content = SecretContent {
        kind: row.kind.parse().map_err(|_| broken())?,
        stage: row.stage.parse().map_err(|_| broken())?,
        path: row.path.clone(),
        items,
    };
    Ok((content, revision_of(&sealed)))
}

/// 16 hex digits of the sealed bytes' SHA-256: new on every seal, and
/// nothing about the values (the nonce is fresh each time).
fn revision_of(sealed: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(sealed.as_bytes());
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clusters::ClusterKey;

    fn item(key: &str, value: &str) -> SecretItem {
        SecretItem { key: key.into(), sub_path: None, value: value.into() }
    }

    fn kept(key: &str, value: Option<&str>) -> KeptItem {
        KeptItem { key: key.into(), sub_path: None, value: value.map(str::to_owned) }
    }

    #[test]
    fn a_value_left_out_keeps_the_stored_one_by_key() {
        let stored = [item("A", "old-a"), item("B", "old-b"), item("C", "old-c")];
        // A keeps its value, B gets a new one, C is left out (removed), D is new; the order is the new one.
        let filled = fill_kept(
            vec![
                kept("B", Some("new-b")),
                KeptItem { sub_path: Some("a.txt".into()), ..kept("A", None) },
                kept("D", Some("")),
            ],
            &stored,
        )
        .unwrap();
        assert_eq!(
            filled,
            vec![
                item("B", "new-b"),
                SecretItem { sub_path: Some("a.txt".into()), ..item("A", "old-a") },
                item("D", "")
            ]
        );
        // Nothing stored: every value must be given.
        assert_eq!(fill_kept(vec![kept("A", Some("x"))], &[]).unwrap(), vec![item("A", "x")]);
    }

    #[test]
    fn a_new_key_without_a_value_is_refused_naming_it() {
        let stored = [item("A", "old-a")];
        let e = fill_kept(vec![kept("A", None), kept("NEW", None), kept("OTHER", None)], &stored).unwrap_err();
        match &e {
            AppError::Invalid { field: Some("items"), message } => {
                assert!(message.contains("\"NEW\", \"OTHER\"") && message.contains("keys"), "{message}");
                assert!(!message.contains("old-a"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // The debug form of an item never shows its value.
        assert!(!format!("{:?}", kept("A", Some("s3cr3t"))).contains("s3cr3t"));
    }

    #[test]
    fn sealed_values_open_only_for_their_own_row_and_key() {
        let key = ClusterKey::from_bytes([7; 32]);
        let items = vec![SecretItem { key: "API_KEY".into(), sub_path: None, value: "s3cr3t-value".into() }];
        let sealed = key.seal_bytes("uid-1", &items_json(&items));
        assert!(!sealed.contains("s3cr3t") && !sealed.contains("API_KEY"), "{sealed}");
        let opened: Vec<SecretItem> = serde_json::from_slice(&key.open_bytes("uid-1", &sealed).unwrap()).unwrap();
        assert_eq!(opened, items);
        assert!(key.open_bytes("uid-2", &sealed).is_none(), "another row's uid must not open it");
        assert!(ClusterKey::from_bytes([8; 32]).open_bytes("uid-1", &sealed).is_none(), "another key must not");
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(key.open_bytes("uid-1", &tampered).is_none());
        // Sealing twice gives different bytes (a fresh nonce each time).
        assert_ne!(key.seal_bytes("uid-1", b"x"), key.seal_bytes("uid-1", b"x"));
    }
}
