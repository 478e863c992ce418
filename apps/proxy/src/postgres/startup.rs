//! A client's StartupMessage: what it may ask for, and the pool key it maps to.

use ferry_postgres::backend::sqlstate;
use ferry_postgres::message::Params;

/// Server connections are shared by clients with the same key: the user, the database and
/// every other startup parameter except `application_name` (so `options`,
/// `client_encoding`, `DateStyle`... given at startup are the server session's own).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub user: String,
    pub database: String,
    /// Sorted by name.
    pub params: Vec<(String, String)>,
}

/// What a valid StartupMessage gives.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Startup {
    pub key: PoolKey,
    /// The client's `application_name`, reported back to it.
    pub application_name: Option<String>,
    /// Protocol options (`_pq_.*`) the proxy does not know: answered with
    /// NegotiateProtocolVersion (with the minor version 0), as PostgreSQL does.
    pub unrecognized: Vec<String>,
}

/// A refusal: SQLSTATE and message, sent as a FATAL ErrorResponse.
pub(crate) type Refusal = (&'static str, String);

/// Check a 3.x StartupMessage's parameters and build its pool key.
pub(crate) fn startup(params: &Params<'_>) -> Result<Startup, Refusal> {
    let mut user = None;
    let mut database = None;
    let mut application_name = None;
    let mut unrecognized = Vec::new();
    let mut rest = Vec::new();
    for (k, v) in params.iter() {
        match k {
            "user" => user = Some(v),
            "database" => database = Some(v),
            "application_name" => application_name = Some(v.to_string()),
            "replication" => {
                // `replication=false|off|no|0` is a normal connection.
                if !matches!(v, "false" | "off" | "no" | "0") {
                    return Err((
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "ferry proxy: replication connections are not supported".into(),
                    ));
                }
            }
            k if k.starts_with("_pq_.") => unrecognized.push(k.to_string()),
            k => rest.push((k.to_string(), v.to_string())),
        }
    }
    let user = match user {
        Some(u) if !u.is_empty() => u,
        _ => {
            return Err((
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet".into(),
            ))
        }
    };
    let database = match database {
        Some(d) if !d.is_empty() => d,
        _ => user,
    };
    rest.sort();
    rest.dedup_by(|a, b| a.0 == b.0);
    Ok(Startup {
        key: PoolKey {
            user: user.to_string(),
            database: database.to_string(),
            params: rest,
        },
        application_name,
        unrecognized,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use ferry_postgres::message::{encode_startup, parse_startup, Startup as Packet};

    fn run(params: &[(&str, &str)]) -> Result<Startup, Refusal> {
        let mut b = BytesMut::new();
        encode_startup(&mut b, params);
        match parse_startup(&b).unwrap() {
            Packet::Startup { params, .. } => startup(&params),
            _ => panic!("not a startup"),
        }
    }

    #[test]
    fn keys_ignore_application_name_and_default_the_database() {
        let a = run(&[("user", "u"), ("application_name", "psql")]).unwrap();
        let b = run(&[("user", "u"), ("database", "u")]).unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(a.key.database, "u");
        assert_eq!(a.application_name.as_deref(), Some("psql"));
        let c = run(&[("user", "u"), ("options", "-c x=1")]).unwrap();
        assert_ne!(a.key, c.key);
        let d = run(&[
            ("client_encoding", "UTF8"),
            ("user", "u"),
            ("DateStyle", "ISO"),
        ])
        .unwrap();
        let e = run(&[
            ("DateStyle", "ISO"),
            ("user", "u"),
            ("client_encoding", "UTF8"),
        ])
        .unwrap();
        assert_eq!(d.key, e.key, "order does not matter");
    }

    #[test]
    fn refusals() {
        assert_eq!(run(&[("database", "d")]).unwrap_err().0, "28000");
        assert_eq!(run(&[("user", "")]).unwrap_err().0, "28000");
        assert_eq!(
            run(&[("user", "u"), ("replication", "database")])
                .unwrap_err()
                .0,
            "0A000"
        );
        assert!(run(&[("user", "u"), ("replication", "false")]).is_ok());
        let s = run(&[("user", "u"), ("_pq_.compression", "on")]).unwrap();
        assert_eq!(s.unrecognized, vec!["_pq_.compression".to_string()]);
        assert!(s.key.params.is_empty());
    }
}
