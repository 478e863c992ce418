//! Sans-IO HTTP/2 (RFC 9113) with HPACK (RFC 7541) (work in progress).
