-- How yatai reaches a Kubernetes cluster (kubeconfig, context, namespace, …),
-- as JSON sealed with XChaCha20-Poly1305 under a key kept outside the
-- database, the cluster's uid bound as associated data. `config` keeps the
-- settings that are not secret, in clear, for display.
ALTER TABLE clusters ADD COLUMN credentials TEXT;
