//! The principal of a client that authenticated with a certificate, named as Kafka's
//! `DefaultKafkaPrincipalBuilder` does with the default `ssl.principal.mapping.rules`:
//! `User:` + the subject DN as Java's `X500Principal.getName()` prints it (RFC 2253: the
//! last RDN first, `CN`/`OU`/`O`/`L`/`ST`/`C`/`STREET`/`DC`/`UID` by name, any other
//! attribute as `OID=#<DER hex>`, special characters escaped with `\`).

use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode, Tag, Tagged};
use x509_cert::Certificate;

const KEYWORDS: &[(ObjectIdentifier, &str)] = &[
    (ObjectIdentifier::new_unwrap("2.5.4.3"), "CN"),
    (ObjectIdentifier::new_unwrap("2.5.4.6"), "C"),
    (ObjectIdentifier::new_unwrap("2.5.4.7"), "L"),
    (ObjectIdentifier::new_unwrap("2.5.4.8"), "ST"),
    (ObjectIdentifier::new_unwrap("2.5.4.9"), "STREET"),
    (ObjectIdentifier::new_unwrap("2.5.4.10"), "O"),
    (ObjectIdentifier::new_unwrap("2.5.4.11"), "OU"),
    (
        ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.25"),
        "DC",
    ),
    (
        ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.1"),
        "UID",
    ),
];

/// `User:<subject DN>` of a DER certificate.
pub fn principal_of(cert_der: &[u8]) -> Result<String, String> {
    let cert = Certificate::from_der(cert_der).map_err(|e| format!("client certificate: {e}"))?;
    Ok(format!("User:{}", subject_dn(&cert)))
}

/// The subject DN in RFC 2253 form.
pub fn subject_dn(cert: &Certificate) -> String {
    let rdns: Vec<String> = cert
        .tbs_certificate
        .subject
        .0
        .iter()
        .rev()
        .map(|rdn| {
            let avas: Vec<String> = rdn
                .0
                .iter()
                .map(|ava| attribute(&ava.oid, &ava.value))
                .collect();
            avas.join("+")
        })
        .collect();
    rdns.join(",")
}

fn attribute(oid: &ObjectIdentifier, value: &x509_cert::der::Any) -> String {
    let keyword = KEYWORDS.iter().find(|(o, _)| o == oid).map(|(_, k)| *k);
    match (keyword, string_value(value)) {
        (Some(k), Some(v)) => format!("{k}={}", escape(&v)),
        _ => {
            let der = value.to_der().unwrap_or_default();
            let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
            format!("{oid}=#{hex}")
        }
    }
}

/// The text of a directory string (None for other types, printed in hex).
fn string_value(value: &x509_cert::der::Any) -> Option<String> {
    let bytes = value.value();
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::VisibleString
        | Tag::NumericString => std::str::from_utf8(bytes).ok().map(str::to_string),
        // T.61 in theory, Latin-1 in practice (as Java decodes it).
        Tag::TeletexString => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// RFC 2253 escaping as Java's `AVA.toRFC2253String`: `,=+<>#;"\` everywhere, a leading or
/// trailing space.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        if ",=+<>#;\"\\".contains(c) || (c == ' ' && (i == 0 || i == last)) {
            out.push('\\');
        }
        if c == '\0' {
            out.push_str("\\00");
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_java() {
        assert_eq!(escape("alice"), "alice");
        assert_eq!(escape("Smith, John"), "Smith\\, John");
        assert_eq!(escape(" a=b+c "), "\\ a\\=b\\+c\\ ");
        assert_eq!(escape("#1;\"x\"\\"), "\\#1\\;\\\"x\\\"\\\\");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(principal_of(b"not a certificate").is_err());
        assert!(principal_of(&[]).is_err());
    }
}
