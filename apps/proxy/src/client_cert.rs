//! The identity of a client that presented a verified certificate (mutual TLS,
//! `--tls-client-ca`), forwarded upstream as Envoy does: an `x-forwarded-client-cert` field
//! (XFCC) with, in Envoy's order, `Hash` (the SHA-256 of the certificate's DER, lowercase hex),
//! `Subject` (the subject distinguished name in RFC 4514 form, double-quoted), then one `URI`
//! per URI subjectAltName (a SPIFFE ID, say) and one `DNS` per DNS subjectAltName:
//! `x-forwarded-client-cert: Hash=9a0c…;Subject="CN=client-1,O=Example";URI=spiffe://example.org/web;DNS=web.example.org`.
//! The proxy drops any such field a client sent itself (Envoy's `SANITIZE`), so an upstream
//! can trust the one it sees.

use x509_parser::der_parser::asn1_rs::ToDer;
use x509_parser::x509::AttributeTypeAndValue;

/// The field's name.
pub(crate) const XFCC: &str = "x-forwarded-client-cert";

/// The XFCC element list of the DER certificate `der` (the verified leaf), or `None` when it
/// does not parse (rustls accepted it, so it should).
pub(crate) fn xfcc_value(der: &[u8]) -> Option<String> {
    use sha2::Digest;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut out = String::from("Hash=");
    for b in sha2::Sha256::digest(der) {
        out.push_str(&format!("{b:02x}"));
    }
    out.push_str(";Subject=\"");
    out.push_str(&subject(&cert));
    out.push('"');
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        let names = &san.value.general_names;
        for (key, want_uri) in [("URI", true), ("DNS", false)] {
            for name in names {
                let value = match (name, want_uri) {
                    (GeneralName::URI(v), true) | (GeneralName::DNSName(v), false) => v,
                    _ => continue,
                };
                out.push(';');
                out.push_str(key);
                out.push('=');
                push_element_value(&mut out, value);
            }
        }
    }
    Some(out)
}

/// An XFCC element value as Envoy writes it: as it is, or double-quoted when it holds one
/// of `,;="` or a space; `"` and `\` escaped inside quotes, and any byte outside printable
/// ASCII as `\XX` (an IA5String may hold control bytes; none reaches the field).
fn push_element_value(out: &mut String, v: &str) {
    let quote = v
        .bytes()
        .any(|b| b",;=\" \\".contains(&b) || !(0x21..=0x7e).contains(&b));
    if quote {
        out.push('"');
    }
    for b in v.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:02X}")),
        }
    }
    if quote {
        out.push('"');
    }
}

/// The subject in RFC 4514 form.
fn subject(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
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
    dn
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
    use sha2::Digest;

    fn cert(dn: &[(rcgen::DnType, &str)], sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.subject_alt_names = sans;
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn cert_with(dn: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        cert(dn, Vec::new())
    }

    /// The value after `Hash=<sha256 of der>;`, which every value starts with.
    fn after_hash(der: &[u8]) -> String {
        let v = xfcc_value(der).unwrap();
        let hash: String = sha2::Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        v.strip_prefix(&format!("Hash={hash};"))
            .unwrap_or_else(|| panic!("{v}"))
            .to_string()
    }

    #[test]
    fn subject_in_rfc4514_order_quoted() {
        use rcgen::DnType::*;
        let der = cert_with(&[
            (CountryName, "US"),
            (OrganizationName, "Example"),
            (CommonName, "client-1"),
        ]);
        assert_eq!(after_hash(&der), r#"Subject="CN=client-1,O=Example,C=US""#);
    }

    #[test]
    fn special_characters_are_escaped() {
        use rcgen::DnType::*;
        let der = cert_with(&[(CommonName, "a\"b,c+d\\ é")]);
        assert_eq!(after_hash(&der), r#"Subject="CN=a\"b\,c\+d\\ \C3\A9""#);
        let der = cert_with(&[(CommonName, " #x ")]);
        assert_eq!(after_hash(&der), r#"Subject="CN=\ #x\ ""#);
    }

    #[test]
    fn uri_then_dns_sans_one_element_each() {
        use rcgen::SanType;
        let ia5 = |s: &str| s.to_string().try_into().unwrap();
        let der = cert(
            &[(rcgen::DnType::CommonName, "web")],
            vec![
                SanType::DnsName(ia5("web.example.org")),
                SanType::URI(ia5("spiffe://example.org/ns/prod/sa/web")),
                SanType::IpAddress("10.0.0.1".parse().unwrap()),
                SanType::DnsName(ia5("*.web.example.org")),
                SanType::URI(ia5("https://x.example/a;b=c")),
            ],
        );
        assert_eq!(
            after_hash(&der),
            "Subject=\"CN=web\";URI=spiffe://example.org/ns/prod/sa/web;\
             URI=\"https://x.example/a;b=c\";DNS=web.example.org;DNS=*.web.example.org"
        );
    }

    #[test]
    fn element_values_cannot_break_the_field() {
        let mut out = String::new();
        push_element_value(&mut out, "a\"b\\c\r\nX-Evil: 1");
        assert_eq!(out, r#""a\"b\\c\0D\0AX-Evil: 1""#);
        let mut out = String::new();
        push_element_value(&mut out, "plain-value/1");
        assert_eq!(out, "plain-value/1");
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(xfcc_value(b"not a certificate"), None);
    }
}
