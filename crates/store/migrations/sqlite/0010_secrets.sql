-- An organization's secrets (`bentoml secret …`). `items` lists the keys
-- (and mount sub-paths) in clear, for display; `sealed` holds the items with
-- their values as JSON sealed with XChaCha20-Poly1305 under the key kept
-- outside the database (the one that seals cluster credentials), the row's
-- uid bound as associated data. No column ever holds a value in clear.
CREATE TABLE secrets (
    uid         TEXT PRIMARY KEY,
    org_uid     TEXT NOT NULL REFERENCES organizations (uid),
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    -- `env` or `mountfile`.
    kind        TEXT NOT NULL,
    -- `build`, `runtime` or `all`.
    stage       TEXT NOT NULL,
    -- `mountfile`: where the files go (`$BENTOML_HOME/...`).
    path        TEXT,
    items       TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    creator_uid TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT,
    UNIQUE (org_uid, name)
);
