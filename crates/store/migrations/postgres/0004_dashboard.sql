-- The dashboard: sign-in sessions, and indexes for its lists.

-- A session cookie holds a random secret; only its SHA-256 is stored here, so
-- a copy of the database does not let anyone sign in.
CREATE TABLE web_sessions (
    id_hash      TEXT PRIMARY KEY,
    user_uid     TEXT NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
    -- The organization the session acts in (one of the user's memberships).
    org_uid      TEXT NOT NULL REFERENCES organizations (uid) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    user_agent   TEXT NOT NULL DEFAULT '',
    client_addr  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX web_sessions_user ON web_sessions (user_uid);
CREATE INDEX web_sessions_expiry ON web_sessions (expires_at);

-- Repository lists, newest first (name order uses the UNIQUE (org_uid, kind, name) index).
CREATE INDEX repositories_newest ON repositories (org_uid, kind, created_at);
-- Deployment lists of an organization.
CREATE INDEX deployments_org_newest ON deployments (org_uid, created_at);
-- A deployment's (or any resource's) own events.
CREATE INDEX events_org_resource ON events (org_uid, resource_type, resource_name, seq);
-- Revisions each member created, members of an organization.
CREATE INDEX organization_members_user ON organization_members (user_uid);
