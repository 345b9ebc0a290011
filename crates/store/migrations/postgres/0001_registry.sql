-- Times are microseconds since the Unix epoch, UTC. JSON is stored as text and
-- returned verbatim. Identifiers (uid) are 32 hex characters.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE organizations (
    uid         TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT
);

CREATE TABLE users (
    uid           TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL DEFAULT '',
    first_name    TEXT NOT NULL DEFAULT '',
    last_name     TEXT NOT NULL DEFAULT '',
    password_hash TEXT,
    is_admin      BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT
);
CREATE INDEX users_email ON users (email);

CREATE TABLE organization_members (
    org_uid    TEXT NOT NULL REFERENCES organizations (uid) ON DELETE CASCADE,
    user_uid   TEXT NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_uid, user_uid)
);

CREATE TABLE api_tokens (
    uid          TEXT PRIMARY KEY,
    org_uid      TEXT NOT NULL REFERENCES organizations (uid) ON DELETE CASCADE,
    user_uid     TEXT NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    token_hash   TEXT NOT NULL UNIQUE,
    token_hint   TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    created_at   BIGINT NOT NULL,
    UNIQUE (org_uid, user_uid, name)
);

CREATE TABLE repositories (
    uid         TEXT PRIMARY KEY,
    org_uid     TEXT NOT NULL REFERENCES organizations (uid),
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    labels      TEXT NOT NULL DEFAULT '[]',
    creator_uid TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT,
    UNIQUE (org_uid, kind, name)
);

-- Content-addressed archives: one row per distinct sha256, whatever number of
-- versions point at it.
CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,
    storage_key TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE versions (
    seq                    BIGSERIAL PRIMARY KEY,
    uid                    TEXT NOT NULL UNIQUE,
    repository_uid         TEXT NOT NULL REFERENCES repositories (uid),
    version                TEXT NOT NULL,
    description            TEXT NOT NULL DEFAULT '',
    manifest               TEXT NOT NULL,
    labels                 TEXT NOT NULL DEFAULT '[]',
    build_at               BIGINT,
    upload_status          TEXT NOT NULL DEFAULT 'pending',
    upload_finished_reason TEXT NOT NULL DEFAULT '',
    upload_started_at      BIGINT,
    upload_finished_at     BIGINT,
    upload_id              TEXT,
    replace_requested_at   BIGINT,
    blob_digest            TEXT REFERENCES blobs (digest),
    image_build_status     TEXT NOT NULL DEFAULT 'pending',
    creator_uid            TEXT,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT,
    UNIQUE (repository_uid, version)
);
CREATE INDEX versions_newest ON versions (repository_uid, seq);
CREATE INDEX versions_blob ON versions (blob_digest);

-- Which models a bento names in its manifest, by tag; resolved to model
-- versions at query time so a model pushed after its bento still counts.
CREATE TABLE bento_model_refs (
    bento_uid     TEXT NOT NULL REFERENCES versions (uid) ON DELETE CASCADE,
    org_uid       TEXT NOT NULL,
    model_name    TEXT NOT NULL,
    model_version TEXT NOT NULL,
    PRIMARY KEY (bento_uid, model_name, model_version)
);
CREATE INDEX bento_model_refs_model ON bento_model_refs (org_uid, model_name, model_version);

-- Every object written to the blob store is either a blob above or an upload
-- here, so nothing is ever orphaned without a record to clean it up from.
CREATE TABLE uploads (
    uid               TEXT PRIMARY KEY,
    version_uid       TEXT NOT NULL,
    mode              TEXT NOT NULL,
    state             TEXT NOT NULL,
    storage_key       TEXT NOT NULL,
    backend_upload_id TEXT,
    digest            TEXT,
    size_bytes        BIGINT,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL
);
CREATE INDEX uploads_version ON uploads (version_uid);

CREATE TABLE events (
    seq            BIGSERIAL PRIMARY KEY,
    uid            TEXT NOT NULL UNIQUE,
    org_uid        TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    actor_uid      TEXT,
    actor_name     TEXT NOT NULL DEFAULT '',
    api_token_name TEXT NOT NULL DEFAULT '',
    operation      TEXT NOT NULL,
    resource_type  TEXT NOT NULL,
    resource_name  TEXT NOT NULL,
    status         TEXT NOT NULL,
    info           TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_org_newest ON events (org_uid, seq);

-- Parts of a multipart upload that yatai receives itself (local store).
CREATE TABLE upload_parts (
    upload_uid  TEXT NOT NULL,
    part_number BIGINT NOT NULL,
    etag        TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    PRIMARY KEY (upload_uid, part_number)
);
