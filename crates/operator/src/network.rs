//! The `network` ConfigMap and the ingress domain suffix.
