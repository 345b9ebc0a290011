-- Deploy targets: `local` is this machine; Kubernetes clusters join later.
CREATE TABLE clusters (
    uid         TEXT PRIMARY KEY,
    org_uid     TEXT NOT NULL REFERENCES organizations (uid),
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL,
    config      TEXT NOT NULL DEFAULT '{}',
    creator_uid TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT,
    UNIQUE (org_uid, name)
);

CREATE TABLE deployments (
    uid               TEXT PRIMARY KEY,
    org_uid           TEXT NOT NULL REFERENCES organizations (uid),
    cluster_uid       TEXT NOT NULL REFERENCES clusters (uid),
    namespace         TEXT NOT NULL,
    name              TEXT NOT NULL,
    description       TEXT NOT NULL DEFAULT '',
    labels            TEXT NOT NULL DEFAULT '[]',
    -- What the user asked for: `running` or `terminated`.
    desired           TEXT NOT NULL,
    -- What is observed: deploying, running, unhealthy, failed, terminating, terminated, …
    status            TEXT NOT NULL,
    status_reason     TEXT NOT NULL DEFAULT '',
    status_updated_at BIGINT,
    -- The local runtime's stable endpoint port, kept across restarts.
    endpoint_port     BIGINT,
    creator_uid       TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT,
    UNIQUE (cluster_uid, namespace, name)
);
CREATE UNIQUE INDEX deployments_port ON deployments (endpoint_port);

-- Every create or update is a revision; exactly one is `active`.
CREATE TABLE deployment_revisions (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    uid            TEXT NOT NULL UNIQUE,
    deployment_uid TEXT NOT NULL REFERENCES deployments (uid) ON DELETE CASCADE,
    status         TEXT NOT NULL,
    -- The revision this one restored, for rollbacks.
    rollback_of    TEXT,
    creator_uid    TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT
);
CREATE INDEX deployment_revisions_newest ON deployment_revisions (deployment_uid, seq);

-- What a revision runs: a bento version and its configuration (the
-- client's DeploymentConfigSchema, stored verbatim). `main` is the stable
-- target; others are canaries.
CREATE TABLE deployment_targets (
    uid            TEXT PRIMARY KEY,
    revision_uid   TEXT NOT NULL REFERENCES deployment_revisions (uid) ON DELETE CASCADE,
    deployment_uid TEXT NOT NULL REFERENCES deployments (uid) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    bento_uid      TEXT NOT NULL,
    config         TEXT NOT NULL,
    creator_uid    TEXT,
    created_at     BIGINT NOT NULL
);
CREATE INDEX deployment_targets_bento ON deployment_targets (bento_uid);
CREATE INDEX deployment_targets_revision ON deployment_targets (revision_uid);
