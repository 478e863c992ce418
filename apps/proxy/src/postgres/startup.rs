//! A client's StartupMessage (checked by `ferry_postgres::server::Login`): the pool key it
//! maps to.

use ferry_postgres::server::StartupParams;

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

/// What a StartupMessage gives.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Startup {
    pub key: PoolKey,
    /// The client's `application_name`, reported back to it.
    pub application_name: Option<String>,
}

/// The pool key of a valid StartupMessage.
pub(crate) fn startup(p: StartupParams) -> Startup {
    let mut application_name = None;
    let mut rest = Vec::with_capacity(p.params.len());
    for (k, v) in p.params {
        if k == "application_name" {
            application_name = Some(v);
        } else {
            rest.push((k, v));
        }
    }
    rest.sort();
    rest.dedup_by(|a, b| a.0 == b.0);
    Startup {
        key: PoolKey {
            user: p.user,
            database: p.database,
            params: rest,
        },
        application_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use ferry_postgres::message::encode_startup;
    use ferry_postgres::server::{Event, Login};

    fn login(params: &[(&str, &str)]) -> Option<Event> {
        let mut b = BytesMut::new();
        encode_startup(&mut b, params);
        Login::new().handle_input(&mut b)
    }

    fn run(params: &[(&str, &str)]) -> Startup {
        match login(params) {
            Some(Event::Startup(p)) => startup(p),
            e => panic!("not a startup: {e:?}"),
        }
    }

    fn refusal(params: &[(&str, &str)]) -> &'static str {
        match login(params) {
            Some(Event::Failed(e)) => e.code(),
            e => panic!("not refused: {e:?}"),
        }
    }

    #[test]
    fn keys_ignore_application_name_and_default_the_database() {
        let a = run(&[("user", "u"), ("application_name", "psql")]);
        let b = run(&[("user", "u"), ("database", "u")]);
        assert_eq!(a.key, b.key);
        assert_eq!(a.key.database, "u");
        assert_eq!(a.application_name.as_deref(), Some("psql"));
        let c = run(&[("user", "u"), ("options", "-c x=1")]);
        assert_ne!(a.key, c.key);
        let d = run(&[
            ("client_encoding", "UTF8"),
            ("user", "u"),
            ("DateStyle", "ISO"),
        ]);
        let e = run(&[
            ("DateStyle", "ISO"),
            ("user", "u"),
            ("client_encoding", "UTF8"),
        ]);
        assert_eq!(d.key, e.key, "order does not matter");
    }

    #[test]
    fn refusals() {
        assert_eq!(refusal(&[("database", "d")]), "28000");
        assert_eq!(refusal(&[("user", "")]), "28000");
        assert_eq!(
            refusal(&[("user", "u"), ("replication", "database")]),
            "0A000"
        );
        run(&[("user", "u"), ("replication", "false")]);
        let s = run(&[("user", "u"), ("_pq_.compression", "on")]);
        assert!(s.key.params.is_empty());
    }
}
