//! v1alpha3 ⇄ v2alpha1 for the conversion webhook.
