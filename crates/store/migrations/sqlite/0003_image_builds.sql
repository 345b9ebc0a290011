-- Images built from bentos by the server (yatai-build), one row per build.
CREATE TABLE image_builds (
    uid         TEXT PRIMARY KEY,
    org_uid     TEXT NOT NULL,
    bento_uid   TEXT NOT NULL,
    -- pending, building, success, failed
    status      TEXT NOT NULL,
    registry    TEXT NOT NULL,
    reference   TEXT NOT NULL DEFAULT '',
    digest      TEXT NOT NULL DEFAULT '',
    error       TEXT NOT NULL DEFAULT '',
    log         TEXT NOT NULL DEFAULT '',
    report      TEXT NOT NULL DEFAULT '{}',
    force       BIGINT NOT NULL DEFAULT 0,
    creator_uid TEXT,
    created_at  BIGINT NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT
);
CREATE INDEX image_builds_bento ON image_builds (bento_uid, created_at);
