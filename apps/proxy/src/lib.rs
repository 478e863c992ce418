//! # ferry-proxy
//!
//! The ferry proxy: HTTP reverse proxy / L7 load balancer and Redis pooling proxy on Ferry drivers
#![deny(missing_docs)]
