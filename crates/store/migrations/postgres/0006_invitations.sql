-- Invitations to an organization. An admin invites by name or email; the
-- person joins only by accepting (signed in, from their account page or the
-- link), or by creating their account through the link. Adding someone never
-- happens without their action.

CREATE TABLE organization_invitations (
    uid         TEXT PRIMARY KEY,
    org_uid     TEXT NOT NULL REFERENCES organizations (uid) ON DELETE CASCADE,
    -- What the admin typed (a name or an email address), kept as typed: it is
    -- never resolved to a user for the admin, so inviting tells nothing about
    -- who exists.
    invitee     TEXT NOT NULL,
    role        TEXT NOT NULL,
    -- SHA-256 of the link's 256-bit secret; the row is deleted when used.
    token_hash  TEXT NOT NULL UNIQUE,
    inviter_uid TEXT REFERENCES users (uid) ON DELETE SET NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX organization_invitations_org ON organization_invitations (org_uid, created_at);
CREATE INDEX organization_invitations_invitee ON organization_invitations (invitee);
