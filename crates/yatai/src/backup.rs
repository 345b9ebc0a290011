//! `yatai backup` and `yatai restore`: one logical export for both backends.
//!
//! A backup is a zstd-compressed tar. Its first member, `manifest.json`, says
//! what it is (format version, the yatai and migration versions that wrote
//! it, row and blob counts) and lists every other member with its size and
//! SHA-256. Then come the metadata tables, one `tables/<name>.jsonl` each
//! (one JSON object per row, column → integer, text or null), read in one
//! read transaction so they are a consistent snapshot while the server runs;
//! then every archive the `blobs` table records, as `blobs/<sha256>` (objects
//! are written once and never replaced, so reading them after the snapshot
//! is safe); then, only with `--include-keys`, the server's key files as
//! `keys/<file>`.
//!
//! A restore reads the manifest first (refusing a newer format or schema),
//! refuses a target that holds anything, inserts the rows in one
//! transaction, writes the blobs, checks every member against the manifest,
//! and commits only when all of it is there and matches. On any failure the
//! transaction is rolled back and the blobs and keys it wrote are deleted.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Column as _, Row as _};
use yatai_blob::{BlobError, BlobStore, WriteLimits};
use yatai_store::Store;
use yatai_store::schema::{self, TABLES};

use crate::config::{DbArgs, StorageArgs};

/// What a backup's manifest says it is.
pub const FORMAT: &str = "yatai-backup";
/// The newest format this binary writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const KEY_NAMES: [&str; 2] = ["url-signing.key", "cluster.key"];

#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// The URL-signing key file (default: DATA_DIR/secrets/url-signing.key).
    #[arg(long, env = "YATAI_URL_SIGNING_KEY_FILE")]
    pub url_signing_key_file: Option<PathBuf>,
    /// The key that seals secrets' values and clusters' credentials (default:
    /// DATA_DIR/secrets/cluster.key).
    #[arg(long, env = "YATAI_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,
}

impl KeyArgs {
    /// `(member file name, path)` for each key.
    fn files(&self, data_dir: &Path) -> [(&'static str, PathBuf); 2] {
        let secrets = data_dir.join("secrets");
        [
            (KEY_NAMES[0], self.url_signing_key_file.clone().unwrap_or_else(|| secrets.join(KEY_NAMES[0]))),
            (KEY_NAMES[1], self.cluster_key_file.clone().unwrap_or_else(|| secrets.join(KEY_NAMES[1]))),
        ]
    }
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// The file to write (a zstd-compressed tar); it must not exist yet.
    #[arg(long)]
    output: PathBuf,
    /// Also put the server's key files in the backup. Without them, restored
    /// secrets and cluster credentials cannot be opened; with them, whoever
    /// holds the backup can open them: keep such a backup somewhere safe.
    #[arg(long)]
    include_keys: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// The backup to restore, written by `yatai backup`.
    #[arg(long)]
    input: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub yatai_version: String,
    /// The newest migration applied to the database the backup was taken from.
    pub migration_version: i64,
    /// `sqlite` or `postgres`: where it came from (a restore may go to either).
    pub database: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub includes_keys: bool,
    pub counts: Counts,
    /// Every other member, in the order they follow the manifest.
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Rows per table.
    pub rows: BTreeMap<String, u64>,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Digests the `blobs` table records whose objects were not in storage
    /// when the backup ran (their rows are kept).
    #[serde(default)]
    pub missing_blobs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// For blobs: the key the object lives at in storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_key: Option<String>,
}

impl Manifest {
    /// Parses a manifest, refusing what is not a yatai backup and formats
    /// newer than this binary reads, with what to do about it.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Manifest> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .context("the backup's manifest.json is not JSON: the file is damaged or not a yatai backup")?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            bail!("this is not a yatai backup: its manifest.json does not say \"format\": \"{FORMAT}\"");
        }
        let version = value.get("format_version").and_then(|v| v.as_u64()).ok_or_else(|| {
            anyhow!("the backup's manifest has no format_version: the file is damaged or not a yatai backup")
        })?;
        if version > u64::from(FORMAT_VERSION) {
            let by = value.get("yatai_version").and_then(|v| v.as_str()).unwrap_or("a newer version");
            bail!(
                "this backup is in format {version}, written by yatai {by}; this yatai ({}) reads format \
                 {FORMAT_VERSION} and older: restore it with yatai {by} or newer",
                env!("CARGO_PKG_VERSION")
            );
        }
        serde_json::from_value(value).context("the backup's manifest.json is damaged (a field is missing or malformed)")
    }

    /// Refuses a backup of a schema newer than this binary's.
    pub fn check_schema(&self, latest_known: i64) -> anyhow::Result<()> {
        if self.migration_version > latest_known {
            bail!(
                "this backup was taken from a database at migration {}, written by yatai {}; this yatai ({}) knows \
                 migrations up to {latest_known}: restore it with yatai {} or newer",
                self.migration_version,
                self.yatai_version,
                env!("CARGO_PKG_VERSION"),
                self.yatai_version
            );
        }
        Ok(())
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), size: 0 }
    }
    fn finish(self) -> (u64, String) {
        (self.size, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Reads exactly `size` bytes of a stored archive and fails at the end when
/// they do not hash to the digest recorded for it, so a damaged store never
/// yields a backup that looks good.
struct Verified<R> {
    inner: HashingReader<R>,
    size: u64,
    sha256: String,
    key: String,
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.size - self.inner.size;
        if left == 0 {
            let got = hex::encode(self.inner.hasher.clone().finalize());
            if got != self.sha256 {
                return Err(std::io::Error::other(format!(
                    "the stored archive {} does not hash to the sha256 recorded for it ({} ≠ {}): the storage is \
                     damaged",
                    self.key, got, self.sha256
                )));
            }
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the stored archive {} ended after {} of its {} bytes (deleted or cut while the backup ran?)",
                    self.key, self.inner.size, self.size
                ),
            ));
        }
        Ok(n)
    }
}

fn sqlite_file_missing(db: &DbArgs) -> Option<PathBuf> {
    let file = db.data_dir.join("yatai.db");
    (db.database_url.is_none() && !file.exists()).then_some(file)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// A row's value as JSON: every column of the schema is an integer or text.
fn value_of(row: &sqlx::any::AnyRow, i: usize) -> anyhow::Result<serde_json::Value> {
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return Ok(v.map(serde_json::Value::from).unwrap_or(serde_json::Value::Null));
    }
    let v: Option<String> = row
        .try_get(i)
        .with_context(|| format!("column {} holds neither an integer nor text", row.columns()[i].name()))?;
    Ok(v.map(serde_json::Value::String).unwrap_or(serde_json::Value::Null))
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if let Some(file) = sqlite_file_missing(&args.db) {
        bail!("there is no yatai database at {}: point --data-dir (or --database-url) at the server's", file.display());
    }
    if args.output.exists() {
        bail!("{} exists already: choose another --output, or remove it first", args.output.display());
    }
    let out_dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let spool = tempfile::Builder::new()
        .prefix(".yatai-backup-")
        .tempdir_in(&out_dir)
        .with_context(|| format!("cannot write in {}", out_dir.display()))?;
    let store = args.db.connect().await?;
    let blobs = args.storage.open(&args.db.data_dir)?;
    eprintln!("backing up {} and {}", args.db.describe(), blobs.describe());

    // The metadata, in one read transaction: a consistent snapshot while the server writes.
    let mut members = Vec::new();
    let mut counts = Counts::default();
    let mut stored: Vec<(String, String, u64)> = Vec::new();
    let migration_version;
    {
        let mut tx = store.pool().begin().await?;
        if store.is_postgres() {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        }
        migration_version = sqlx::query_scalar::<_, i64>("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut *tx)
            .await
            .context("cannot read the database's migration version")?;
        for table in TABLES {
            let path = format!("tables/{table}.jsonl");
            let file = std::fs::File::create(spool.path().join(format!("{table}.jsonl")))?;
            let mut w = Hashing { inner: BufWriter::new(file), hasher: Sha256::new(), size: 0 };
            let sql = format!("SELECT * FROM {} ORDER BY 1", schema::known(table)?);
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
            let mut n = 0u64;
            while let Some(row) = rows.next().await {
                let row = row.with_context(|| format!("cannot read the table {table}"))?;
                let mut obj = serde_json::Map::new();
                for (i, col) in row.columns().iter().enumerate() {
                    obj.insert(col.name().to_owned(), value_of(&row, i).with_context(|| format!("table {table}"))?);
                }
                if *table == "blobs" {
                    let s = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                    let (Some(digest), Some(key), Some(size)) =
                        (s("digest"), s("storage_key"), obj.get("size_bytes").and_then(|v| v.as_u64()))
                    else {
                        bail!("a row of the blobs table lacks its digest, storage key or size: {obj:?}");
                    };
                    stored.push((digest, key, size));
                }
                serde_json::to_writer(&mut w, &obj)?;
                w.write_all(b"\n")?;
                n += 1;
            }
            drop(rows);
            w.flush()?;
            eprintln!("  table {table}: {n} rows");
            counts.rows.insert((*table).to_owned(), n);
            members.push(Member { path, size: w.size, sha256: hex::encode(w.hasher.finalize()), storage_key: None });
        }
        tx.rollback().await?;
    }

    // The archives: immutable, so reading them after the snapshot is safe. One
    // that is gone (deleted since) is left out and said so.
    for (digest, key, size) in &stored {
        match blobs.open(key).await {
            Ok(r) if r.size == *size => {
                counts.blobs += 1;
                counts.blob_bytes += size;
                members.push(Member {
                    path: format!("blobs/{digest}"),
                    size: *size,
                    sha256: digest.clone(),
                    storage_key: Some(key.clone()),
                });
            }
            Ok(r) => bail!(
                "the stored archive {key} holds {} bytes but {size} are recorded for it: the storage is damaged",
                r.size
            ),
            Err(BlobError::NotFound(_)) => {
                eprintln!("  warning: the archive {key} (sha256 {digest}) is not in storage; its record is kept");
                counts.missing_blobs.push(digest.clone());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read the stored archive {key}")),
        }
    }

    let mut keys = Vec::new();
    if args.include_keys {
        for (name, path) in args.keys.files(&args.db.data_dir) {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    members.push(Member {
                        path: format!("keys/{name}"),
                        size: bytes.len() as u64,
                        sha256: hex::encode(Sha256::digest(&bytes)),
                        storage_key: None,
                    });
                    keys.push((name, bytes));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    eprintln!("  warning: no key at {} (the server has not made one yet); left out", path.display())
                }
                Err(e) => return Err(e).with_context(|| format!("cannot read the key {}", path.display())),
            }
        }
    }

    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        yatai_version: env!("CARGO_PKG_VERSION").into(),
        migration_version,
        database: if store.is_postgres() { "postgres" } else { "sqlite" }.into(),
        created_at: now_secs(),
        includes_keys: !keys.is_empty(),
        counts,
        members,
    };
    store.close().await;

    let partial = out_dir.join(format!(
        ".{}.partial",
        args.output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "backup".into())
    ));
    let handle = tokio::runtime::Handle::current();
    let spool_dir = spool.path().to_path_buf();
    let m = manifest.clone();
    let written = tokio::task::spawn_blocking({
        let partial = partial.clone();
        move || write_archive(&handle, &blobs, &m, &spool_dir, &keys, &partial)
    })
    .await?;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context("the backup failed; nothing was written"));
    }
    std::fs::rename(&partial, &args.output)
        .with_context(|| format!("cannot move the backup to {}", args.output.display()))?;
    let size = std::fs::metadata(&args.output)?.len();
    let rows: u64 = manifest.counts.rows.values().sum();
    eprintln!(
        "backup written to {} ({}) in {:.1?}: {rows} rows, {} archives ({}), keys {}",
        args.output.display(),
        human(size),
        started.elapsed(),
        manifest.counts.blobs,
        human(manifest.counts.blob_bytes),
        if manifest.includes_keys {
            "included: whoever holds this file can open the secrets and cluster credentials, keep it safe"
        } else {
            "not included (--include-keys): keep the server's cluster.key apart, or restored secrets cannot be opened"
        }
    );
    Ok(())
}

fn header(size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn write_archive(
    handle: &tokio::runtime::Handle,
    blobs: &BlobStore,
    manifest: &Manifest,
    spool: &Path,
    keys: &[(&str, Vec<u8>)],
    partial: &Path,
) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let encoder = zstd::Encoder::new(BufWriter::new(file), 3)?;
    let mut tar = tar::Builder::new(encoder);
    let mtime = manifest.created_at;
    let json = serde_json::to_vec_pretty(manifest)?;
    tar.append_data(&mut header(json.len() as u64, mtime), MANIFEST, json.as_slice())?;
    let (total, mut done, mut n) = (manifest.counts.blob_bytes, 0u64, 0u64);
    for m in &manifest.members {
        if let Some(table) = m.path.strip_prefix("tables/") {
            let f = std::fs::File::open(spool.join(table))?;
            tar.append_data(&mut header(m.size, mtime), &m.path, f).with_context(|| m.path.clone())?;
        } else if let Some(key) = &m.storage_key {
            let reader = match handle.block_on(blobs.open(key)) {
                Ok(r) => r,
                Err(BlobError::NotFound(_)) => {
                    bail!("the archive {key} was deleted while the backup ran: run the backup again")
                }
                Err(e) => return Err(e).with_context(|| format!("cannot read {key}")),
            };
            let stream = reader.stream.map(|r| r.map_err(std::io::Error::other));
            let sync = tokio_util::io::SyncIoBridge::new_with_handle(
                tokio_util::io::StreamReader::new(stream),
                handle.clone(),
            );
            let verified =
                Verified { inner: HashingReader::new(sync), size: m.size, sha256: m.sha256.clone(), key: key.clone() };
            tar.append_data(&mut header(m.size, mtime), &m.path, verified).with_context(|| m.path.clone())?;
            n += 1;
            done += m.size;
            eprintln!(
                "  archive {n}/{}: {key} ({}; {} of {})",
                manifest.counts.blobs,
                human(m.size),
                human(done),
                human(total)
            );
        } else if let Some(name) = m.path.strip_prefix("keys/") {
            let bytes = &keys.iter().find(|(k, _)| *k == name).expect("listed key").1;
            tar.append_data(&mut header(m.size, mtime), &m.path, bytes.as_slice())?;
            eprintln!("  key {name}");
        }
    }
    let encoder = tar.into_inner()?;
    let file = encoder.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let file = std::fs::File::open(&args.input).with_context(|| format!("cannot open {}", args.input.display()))?;
    let store = args.db.connect().await?;
    let blobs = args.storage.open(&args.db.data_dir)?;

    // The target must hold nothing: a restore never merges.
    for table in TABLES {
        let sql = format!("SELECT COUNT(*) FROM {}", schema::known(table)?);
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(store.pool()).await?;
        if n > 0 {
            bail!(
                "the target database {} is not empty (its table {table} has {n} rows): restore into an empty data \
                 directory or a new, empty database; nothing was restored",
                args.db.describe()
            );
        }
    }
    let objects = blobs.list("").await.context("cannot list the target storage")?;
    if let Some((first, _)) = objects.first() {
        bail!(
            "the target storage {} is not empty ({} objects, e.g. {first}): restore into an empty data directory or \
             a new, empty bucket; nothing was restored",
            blobs.describe(),
            objects.len()
        );
    }
    let key_files = args.keys.files(&args.db.data_dir);
    eprintln!("restoring {} into {} and {}", args.input.display(), args.db.describe(), blobs.describe());

    let handle = tokio::runtime::Handle::current();
    let input = args.input.clone();
    let (store2, blobs2, keys2) = (store.clone(), blobs.clone(), key_files.clone());
    let (manifest, written_keys) =
        tokio::task::spawn_blocking(move || restore_blocking(&handle, &store2, &blobs2, &keys2, file, &input))
            .await??;

    let rows: u64 = manifest.counts.rows.values().sum();
    eprintln!(
        "restored {} in {:.1?}: {rows} rows, {} archives ({}), from a backup of yatai {} taken at migration {}",
        args.input.display(),
        started.elapsed(),
        manifest.counts.blobs,
        human(manifest.counts.blob_bytes),
        manifest.yatai_version,
        manifest.migration_version,
    );
    if !manifest.counts.missing_blobs.is_empty() {
        eprintln!(
            "warning: {} archives were not in storage when the backup was taken; their versions cannot be pulled",
            manifest.counts.missing_blobs.len()
        );
    }
    if written_keys.is_empty() {
        let secrets = manifest.counts.rows.get("secrets").copied().unwrap_or(0);
        let clusters: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM clusters WHERE credentials IS NOT NULL")
            .fetch_one(store.pool())
            .await?;
        eprintln!(
            "warning: this backup holds no keys (it was taken without --include-keys). The values of its {secrets} \
             secrets and the credentials of its {clusters} Kubernetes clusters are sealed with the cluster key of \
             the server it came from: copy that server's cluster.key to {} before starting yatai, or they cannot be \
             opened (replace them with `bentoml secret apply` and by registering the clusters again). A new \
             URL-signing key is made at the first start.",
            key_files[1].1.display()
        );
    } else {
        for path in &written_keys {
            eprintln!("restored the key {}", path.display());
        }
    }
    store.close().await;
    Ok(())
}

/// What a failed restore must undo.
#[derive(Default)]
struct Undo {
    blobs: Vec<String>,
    keys: Vec<PathBuf>,
}

fn restore_blocking(
    handle: &tokio::runtime::Handle,
    store: &Store,
    blobs: &BlobStore,
    key_files: &[(&'static str, PathBuf); 2],
    file: std::fs::File,
    input: &Path,
) -> anyhow::Result<(Manifest, Vec<PathBuf>)> {
    let mut tx = handle.block_on(store.pool().begin())?;
    let mut undo = Undo::default();
    let result = restore_members(handle, store, blobs, key_files, file, input, &mut tx, &mut undo);
    let result = match result {
        Ok(m) => handle.block_on(tx.commit()).map(|_| m).context("cannot commit the restored rows"),
        Err(e) => {
            let _ = handle.block_on(tx.rollback());
            Err(e)
        }
    };
    match result {
        Ok(m) => Ok((m, undo.keys)),
        Err(e) => {
            for key in &undo.blobs {
                let _ = handle.block_on(blobs.delete(key));
            }
            for path in &undo.keys {
                let _ = std::fs::remove_file(path);
            }
            Err(e.context(format!("the restore of {} failed; nothing was restored", input.display())))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn restore_members(
    handle: &tokio::runtime::Handle,
    store: &Store,
    blobs: &BlobStore,
    key_files: &[(&'static str, PathBuf); 2],
    file: std::fs::File,
    input: &Path,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    undo: &mut Undo,
) -> anyhow::Result<Manifest> {
    let damaged = |e: std::io::Error, after: &str| {
        anyhow!(
            "{} is truncated or damaged ({e}) after {after}: take the backup again, or use an intact copy",
            input.display()
        )
    };
    let mut file = file;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    if n < 4 || magic != [0x28, 0xb5, 0x2f, 0xfd] {
        bail!(
            "{} is not a yatai backup: it is not zstd-compressed (a backup is the .tar.zst file `yatai backup` writes)",
            input.display()
        );
    }
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
    let decoder = zstd::Decoder::new(BufReader::new(file))?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive.entries()?;
    let first = match entries.next() {
        Some(Ok(e)) => e,
        Some(Err(e)) => return Err(damaged(e, "its start")),
        None => bail!("{} is truncated: it holds no manifest", input.display()),
    };
    let name = first.path()?.to_string_lossy().into_owned();
    if name != MANIFEST {
        bail!("{} is not a yatai backup: its first member is {name:?}, not {MANIFEST}", input.display());
    }
    let mut bytes = Vec::new();
    first.take(64 << 20).read_to_end(&mut bytes).map_err(|e| damaged(e, "the start of its manifest"))?;
    let manifest = Manifest::parse(&bytes)?;
    manifest.check_schema(store.latest_known_migration())?;
    if manifest.migration_version < store.latest_known_migration() {
        eprintln!(
            "note: this backup is of an older schema (migration {}; this yatai is at {}): its rows are restored into \
             the current schema, and columns added since take their defaults",
            manifest.migration_version,
            store.latest_known_migration()
        );
    }
    if manifest.includes_keys {
        for (_, path) in key_files {
            if path.exists() {
                bail!(
                    "a key exists already at {}: restore a backup with keys into an empty data directory (or move \
                     the key away); nothing was restored",
                    path.display()
                );
            }
        }
    }
    let expected: HashMap<&str, &Member> = manifest.members.iter().map(|m| (m.path.as_str(), m)).collect();
    let mut seen: Vec<&str> = Vec::new();
    let mut last = MANIFEST.to_owned();
    let mut columns_of: HashMap<String, HashMap<String, bool>> = HashMap::new();
    let total_bytes = manifest.counts.blob_bytes;
    let (mut done_bytes, mut blob_n) = (0u64, 0u64);
    let mut pending_keys: Vec<(PathBuf, Vec<u8>)> = Vec::new();

    for entry in entries {
        let entry = entry.map_err(|e| damaged(e, &last))?;
        let path = entry.path().map_err(|e| damaged(e, &last))?.to_string_lossy().into_owned();
        let member = *expected.get(path.as_str()).ok_or_else(|| {
            anyhow!("{} holds {path:?}, which its manifest does not list: it is damaged", input.display())
        })?;
        if seen.contains(&member.path.as_str()) {
            bail!("{} holds {path:?} twice: it is damaged", input.display());
        }
        if entry.size() != member.size {
            bail!(
                "{path} in {} is {} bytes but its manifest says {}: the backup is damaged",
                input.display(),
                entry.size(),
                member.size
            );
        }
        let mismatch = |got: &str| {
            anyhow!(
                "{path} in {} does not match the sha256 in its manifest ({got} ≠ {}): the backup is damaged or was \
                 altered",
                input.display(),
                member.sha256
            )
        };
        if let Some(table) = path.strip_prefix("tables/").and_then(|t| t.strip_suffix(".jsonl")) {
            let table = schema::known(table).map_err(|_| {
                anyhow!(
                    "the backup holds a table {table:?} that this yatai ({}) does not know: restore it with yatai {} or \
                     newer",
                    env!("CARGO_PKG_VERSION"),
                    manifest.yatai_version
                )
            })?;
            if !columns_of.contains_key(table) {
                let cols = handle.block_on(store.columns(table))?;
                columns_of.insert(table.to_owned(), cols.into_iter().map(|c| (c.name, c.integer)).collect());
            }
            let cols = &columns_of[table];
            let mut reader = BufReader::new(HashingReader::new(entry));
            let mut line = String::new();
            let mut n = 0u64;
            loop {
                line.clear();
                if reader.read_line(&mut line).map_err(|e| damaged(e, &last))? == 0 {
                    break;
                }
                let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line)
                    .map_err(|e| anyhow!("{path}, line {}: not a row ({e}): the backup is damaged", n + 1))?;
                insert_row(handle, tx, table, cols, &row).with_context(|| format!("{path}, line {}", n + 1))?;
                n += 1;
            }
            let (_, sha) = reader.into_inner().finish();
            if sha != member.sha256 {
                return Err(mismatch(&sha));
            }
            if Some(&n) != manifest.counts.rows.get(table) {
                bail!("{path} holds {n} rows but the manifest counts {:?}", manifest.counts.rows.get(table));
            }
            eprintln!("  table {table}: {n} rows");
        } else if let Some(digest) = path.strip_prefix("blobs/") {
            let key = member
                .storage_key
                .clone()
                .filter(|k| k.starts_with("blobs/") && !k.split('/').any(|s| s == ".." || s.is_empty()))
                .ok_or_else(|| anyhow!("{path}: the manifest gives it no valid storage key: the backup is damaged"))?;
            if digest != member.sha256 {
                return Err(mismatch(digest));
            }
            undo.blobs.push(key.clone());
            let written = write_blob(handle, blobs, &key, member.size, entry).map_err(|e| match e {
                WriteError::Read(e) => damaged(e, &last),
                WriteError::Store(e) => anyhow!("cannot write {key} to the target storage: {e}"),
            })?;
            if written.sha256 != member.sha256 {
                return Err(mismatch(&written.sha256));
            }
            blob_n += 1;
            done_bytes += written.size;
            eprintln!(
                "  archive {blob_n}/{}: {key} ({}; {} of {})",
                manifest.counts.blobs,
                human(written.size),
                human(done_bytes),
                human(total_bytes)
            );
        } else if let Some(name) = path.strip_prefix("keys/") {
            let target = key_files
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| anyhow!("the backup holds an unknown key {name:?}"))?;
            let mut bytes = Vec::new();
            entry.take(1 << 16).read_to_end(&mut bytes).map_err(|e| damaged(e, &last))?;
            let sha = hex::encode(Sha256::digest(&bytes));
            if sha != member.sha256 {
                return Err(mismatch(&sha));
            }
            pending_keys.push((target.1.clone(), bytes));
        } else {
            bail!("{} holds {path:?}, which is not part of a yatai backup", input.display());
        }
        seen.push(member.path.as_str());
        last = path;
    }
    let missing: Vec<&str> = manifest.members.iter().map(|m| m.path.as_str()).filter(|p| !seen.contains(p)).collect();
    if let Some(first) = missing.first() {
        bail!(
            "{} is truncated: {} of its {} members are missing (from {first}, after {last}); take the backup again, \
             or use an intact copy",
            input.display(),
            missing.len(),
            manifest.members.len()
        );
    }
    // PostgreSQL's sequences do not follow explicit keys: start them after the restored rows.
    if store.is_postgres() {
        for (table, cols) in &columns_of {
            if cols.contains_key("seq") {
                let sql = format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'seq'), COALESCE(MAX(seq), 0) + 1, false) FROM {table}"
                );
                handle.block_on(sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut **tx))?;
            }
        }
    }
    for (path, bytes) in pending_keys {
        undo.keys.push(path.clone());
        yatai_app::clusters::write_private(&path, &bytes)
            .with_context(|| format!("cannot write the key {}", path.display()))?;
    }
    Ok(manifest)
}

fn insert_row(
    handle: &tokio::runtime::Handle,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    table: &'static str,
    cols: &HashMap<String, bool>,
    row: &serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let mut names = Vec::with_capacity(row.len());
    for name in row.keys() {
        if !cols.contains_key(name) {
            bail!("the column {table}.{name} is not in this yatai's schema (a backup of a newer yatai?)");
        }
        names.push(name.as_str());
    }
    let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    // Column names come from the target's own catalog (checked above), never from the file alone.
    let sql = format!("INSERT INTO {table} ({}) VALUES ({})", names.join(", "), placeholders.join(", "));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (name, value) in row {
        let integer = cols[name];
        q = match (value, integer) {
            (serde_json::Value::Null, true) => q.bind(None::<i64>),
            (serde_json::Value::Null, false) => q.bind(None::<String>),
            (serde_json::Value::Number(n), true) => {
                q.bind(n.as_i64().ok_or_else(|| anyhow!("{table}.{name}: {n} is not a 64-bit integer"))?)
            }
            (serde_json::Value::String(s), false) => q.bind(s.clone()),
            (other, integer) => bail!(
                "{table}.{name} holds {other} where this schema has {}",
                if integer { "an integer" } else { "text" }
            ),
        };
    }
    handle.block_on(q.execute(&mut **tx))?;
    Ok(())
}

enum WriteError {
    Read(std::io::Error),
    Store(BlobError),
}

/// Streams a member into storage: read here (blocking), written by the async
/// blob store through a small channel, so memory stays bounded.
fn write_blob(
    handle: &tokio::runtime::Handle,
    blobs: &BlobStore,
    key: &str,
    size: u64,
    mut entry: impl Read,
) -> Result<yatai_blob::Written, WriteError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let task = {
        let (blobs, key) = (blobs.clone(), key.to_owned());
        handle.spawn(async move {
            blobs.write(&key, body, WriteLimits { expected_len: Some(size), max_len: Some(size) }).await
        })
    };
    let mut read_error = None;
    loop {
        let mut buf = vec![0u8; 1 << 20];
        match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    break;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
                read_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let result = handle.block_on(task).map_err(|e| WriteError::Store(BlobError::Storage(e.to_string())))?;
    if let Some(e) = read_error {
        return Err(WriteError::Read(e));
    }
    result.map_err(WriteError::Store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            yatai_version: "0.1.0".into(),
            migration_version: 10,
            database: "sqlite".into(),
            created_at: 1_700_000_000,
            includes_keys: false,
            counts: Counts {
                rows: [("organizations".to_owned(), 1)].into(),
                blobs: 1,
                blob_bytes: 5,
                missing_blobs: vec![],
            },
            members: vec![
                Member { path: "tables/organizations.jsonl".into(), size: 10, sha256: "ab".into(), storage_key: None },
                Member {
                    path: "blobs/cd".into(),
                    size: 5,
                    sha256: "cd".into(),
                    storage_key: Some("blobs/0123".into()),
                },
            ],
        }
    }

    #[test]
    fn a_manifest_reads_back_as_written() {
        let m = manifest();
        let bytes = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        m.check_schema(10).unwrap();
        m.check_schema(11).unwrap();
    }

    #[test]
    fn a_newer_format_is_refused_saying_which_yatai_reads_it() {
        let mut v = serde_json::to_value(manifest()).unwrap();
        v["format_version"] = (FORMAT_VERSION + 1).into();
        v["yatai_version"] = "9.9.9".into();
        v["some_new_field"] = "x".into();
        let e = Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err().to_string();
        assert!(e.contains(&format!("format {}", FORMAT_VERSION + 1)), "{e}");
        assert!(e.contains("yatai 9.9.9 or newer"), "{e}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut m = manifest();
        m.migration_version = 99;
        let e = m.check_schema(10).unwrap_err().to_string();
        assert!(e.contains("migration 99") && e.contains("up to 10"), "{e}");
    }

    #[test]
    fn what_is_not_a_backup_manifest_is_refused() {
        let e = Manifest::parse(b"not json").unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
        let e = Manifest::parse(br#"{"format": "something-else", "format_version": 1}"#).unwrap_err().to_string();
        assert!(e.contains("not a yatai backup"), "{e}");
        let e = Manifest::parse(br#"{"format": "yatai-backup"}"#).unwrap_err().to_string();
        assert!(e.contains("no format_version"), "{e}");
        let e = Manifest::parse(br#"{"format": "yatai-backup", "format_version": 1}"#).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
    }

    #[test]
    fn a_stored_archive_that_does_not_match_its_digest_fails_the_read() {
        let data = b"hello".to_vec();
        let good = hex::encode(Sha256::digest(&data));
        let mut out = Vec::new();
        let mut r = Verified { inner: HashingReader::new(data.as_slice()), size: 5, sha256: good, key: "k".into() };
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let mut r =
            Verified { inner: HashingReader::new(data.as_slice()), size: 5, sha256: "00".into(), key: "k".into() };
        assert!(r.read_to_end(&mut Vec::new()).unwrap_err().to_string().contains("does not hash"));
        let mut r = Verified { inner: HashingReader::new(&data[..3]), size: 5, sha256: "00".into(), key: "k".into() };
        assert!(r.read_to_end(&mut Vec::new()).unwrap_err().to_string().contains("ended after 3"));
    }
}
