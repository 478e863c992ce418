//! The identity of a client that presented a verified certificate (mutual TLS,
//! `--tls-client-ca`), forwarded upstream as Envoy does: an `x-forwarded-client-cert` field
//! (XFCC) whose `Subject` element is the certificate's subject distinguished name in
//! RFC 4514 form, double-quoted: `x-forwarded-client-cert: Subject="CN=client-1,O=Example"`.
//! The proxy drops any such field a client sent itself (Envoy's `SANITIZE`), so an upstream
//! can trust the one it sees.

use x509_parser::der_parser::asn1_rs::ToDer;
use x509_parser::x509::AttributeTypeAndValue;

/// The field's name.
pub(crate) const XFCC: &str = "x-forwarded-client-cert";

/// `Subject="<RFC 4514 subject>"` of the DER certificate `der` (the verified leaf), or
/// `None` when it does not parse (rustls accepted it, so it should).
pub(crate) fn xfcc_value(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut dn = String::new();
    // RFC 4514 §2.1: the last RDN of the sequence first, comma-separated; the attributes of a
    // multi-valued RDN joined by `+`.
    for (i, rdn) in cert
        .subject()
        .iter_rdn()
        .collect::<Vec<_>>()
        .iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            dn.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                dn.push('+');
            }
            push_attribute(&mut dn, attr);
        }
    }
    Some(format!("Subject=\"{dn}\""))
}

/// `type=value` (RFC 4514 §2.3, §2.4): the short name (`CN`, `O`...) or the dotted OID; a
/// string value escaped, any other `#` and its DER in hex.
fn push_attribute(out: &mut String, attr: &AttributeTypeAndValue<'_>) {
    let registry = x509_parser::objects::oid_registry();
    match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
        Ok(abbrev) => out.push_str(abbrev),
        Err(_) => out.push_str(&attr.attr_type().to_id_string()),
    }
    out.push('=');
    match attr.as_str() {
        Ok(s) => escape(out, s),
        Err(_) => {
            out.push('#');
            for b in attr.attr_value().to_der_vec().unwrap_or_default() {
                out.push_str(&format!("{b:02x}"));
            }
        }
    }
}

/// RFC 4514 §2.4 escaping, plus every byte outside printable ASCII as `\XX` (allowed by the
/// RFC, and keeps the field value plain ASCII). The result never holds a bare `"`, so it
/// can be double-quoted as it is.
fn escape(out: &mut String, s: &str) {
    let last = s.len().saturating_sub(1);
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            b'#' if i == 0 => out.push_str("\\#"),
            b' ' if i == 0 || i == last => out.push_str("\\ "),
            0x21..=0x7e | b' ' => out.push(b as char),
            _ => out.push_str(&format!("\\{b:02X}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_in_rfc4514_order_quoted() {
        use rcgen::DnType::*;
        let der = cert_with(&[
            (CountryName, "US"),
            (OrganizationName, "Example"),
            (CommonName, "client-1"),
        ]);
        assert_eq!(
            xfcc_value(&der).unwrap(),
            r#"Subject="CN=client-1,O=Example,C=US""#
        );
    }

    #[test]
    fn special_characters_are_escaped() {
        use rcgen::DnType::*;
        let der = cert_with(&[(CommonName, "a\"b,c+d\\ é")]);
        assert_eq!(
            xfcc_value(&der).unwrap(),
            r#"Subject="CN=a\"b\,c\+d\\ \C3\A9""#
        );
        let der = cert_with(&[(CommonName, " #x ")]);
        assert_eq!(xfcc_value(&der).unwrap(), r#"Subject="CN=\ #x\ ""#);
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(xfcc_value(b"not a certificate"), None);
    }
}
