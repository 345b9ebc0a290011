-- Who manages a deployment: `yatai`, or `external`: a BentoDeployment made
-- outside yatai (kubectl, a GitOps tool) in a namespace yatai watches. Yatai
-- shows an external deployment and follows its status, and never changes it.
ALTER TABLE deployments ADD COLUMN managed_by TEXT NOT NULL DEFAULT 'yatai';
-- An external deployment's bento as its BentoDeployment names it (the tag,
-- else the Bento object's name), also when the registry does not have it.
ALTER TABLE deployments ADD COLUMN external_bento TEXT;
