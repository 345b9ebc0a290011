-- The host label a deployment answers at under --deployment-domain
-- (`<name>-<namespace>.<domain>`). Hosts are shared by every organization of
-- the server, so the label must be unique across organizations, and across
-- name/namespace splits (`a-b` in `c` and `a` in `b-c` are both `a-b-c`).
ALTER TABLE deployments ADD COLUMN host TEXT;
-- Existing deployments keep their host unless an older deployment holds it;
-- the younger ones of a collision get none (they stay reachable on their
-- own port).
UPDATE deployments SET host = name || '-' || namespace
WHERE NOT EXISTS (
    SELECT 1 FROM deployments o
    WHERE o.name || '-' || o.namespace = deployments.name || '-' || deployments.namespace
      AND (o.created_at < deployments.created_at OR (o.created_at = deployments.created_at AND o.uid < deployments.uid))
);
CREATE UNIQUE INDEX deployments_host ON deployments (host);
