//! Sans-IO Redis RESP2/RESP3 server and client connections (work in progress).
