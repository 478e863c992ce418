//! The client side of an HTTP/1.1 connection (being written).
