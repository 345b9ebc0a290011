//! Domain types of yatai-rs: names, tags, manifests. No IO lives here.
