//! What an API token may be used for, besides its owner's role.

use crate::text_enum::text_enum;

text_enum!(
    /// A token scope, as clients send it and tokens store it.
    Scope, "token scope" {
        /// Everything the owner's role allows (what the bentoml CLI needs).
        Api = "api",
        ReadOrganization = "read_organization",
        WriteOrganization = "write_organization",
        ReadCluster = "read_cluster",
        WriteCluster = "write_cluster",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_keep_their_wire_text() {
        assert_eq!(Scope::NAMES, ["api", "read_organization", "write_organization", "read_cluster", "write_cluster"]);
        for (v, s) in Scope::ALL {
            assert_eq!(s.parse::<Scope>().unwrap(), *v);
        }
        assert!("admin".parse::<Scope>().unwrap_err().contains("token scope"));
    }
}
