//! The `x-tongban-*` metadata of a federated call, and its parsing: defined once, here, so
//! that nodes, providers, clients and portals agree on names and rules.
//!
//! Set by callers: [`TARGET_CITY`], [`TARGET_ORG`], [`REQUEST_ID`], [`PURPOSE`],
//! [`SUBJECT`], [`CONSENT`], [`CATALOG_CODE`]. Set by nodes only (a caller's value is
//! dropped or overwritten): [`ORIGIN_CITY`], [`CALLER`], [`PRINCIPAL`],
//! [`CALLER_ASSERTION`], and the [`RECEIPT`] trailer.

/// The city that should serve the call.
pub const TARGET_CITY: &str = "x-tongban-target-city";
/// The organisation, when several of one city offer the service.
pub const TARGET_ORG: &str = "x-tongban-target-org";
/// The request id that keys the audit records of both cities; returned on every response.
pub const REQUEST_ID: &str = "x-tongban-request-id";
/// Why the call is made (a lowercase id such as `case-handling`).
pub const PURPOSE: &str = "x-tongban-purpose";
/// The citizen's resident identity number (GB 11643); never logged or stored in clear.
pub const SUBJECT: &str = "x-tongban-subject";
/// The citizen's consent token, for personal-data services.
pub const CONSENT: &str = "x-tongban-consent";
/// The catalog item the call is for.
pub const CATALOG_CODE: &str = "x-tongban-catalog-code";
/// Node only: the city the call came from, given to the provider.
pub const ORIGIN_CITY: &str = "x-tongban-origin-city";
/// Node only: `city/org` of the authenticated caller, given to the provider.
pub const CALLER: &str = "x-tongban-caller";
/// Node only: who is behind the call, as the node that hands it to the provider vouches for
/// it ([`VouchedPrincipal`]): `kind=official;city=jinan;org=hrss;person=zhang.wei`.
pub const PRINCIPAL: &str = "x-tongban-principal";
/// Node only: the home node's signed caller assertion, node to node.
pub const CALLER_ASSERTION: &str = "x-tongban-caller-assertion";
/// Node only, trailer: the providing node's signed receipt of the exchange.
pub const RECEIPT: &str = "x-tongban-receipt";

/// What kind of person is behind a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PersonKind {
    /// A civil servant of a department: `person` is the id their city's identity provider
    /// issued (the token's `sub`).
    Official,
    /// A citizen acting for themselves (a citizen token, or a portal on their behalf):
    /// `person` is only the home node's keyed pseudonym, never the resident id.
    Citizen,
    /// A system account (a batch job, a department's back office acting for nobody in
    /// particular): `person` is the account id as issued.
    System,
}

impl PersonKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PersonKind::Official => "official",
            PersonKind::Citizen => "citizen",
            PersonKind::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<PersonKind> {
        match s {
            "official" => Some(PersonKind::Official),
            "citizen" => Some(PersonKind::Citizen),
            "system" => Some(PersonKind::System),
            _ => None,
        }
    }
}

impl std::fmt::Display for PersonKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The principal a node vouches for to its provider in [`PRINCIPAL`]: the city and the
/// organisation of the caller, the kind of person and the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VouchedPrincipal {
    pub kind: PersonKind,
    pub city: String,
    pub org: String,
    /// An official's or system account's id as issued, or a citizen's pseudonym.
    pub person: String,
}

/// Bytes of a person id kept as they are in [`PRINCIPAL`]; any other is `%XX`.
fn plain_person_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'~' | b':')
}

impl VouchedPrincipal {
    /// The metadata value: `kind=…;city=…;org=…;person=…` (the person percent-encoded).
    pub fn encode(&self) -> String {
        let mut person = String::with_capacity(self.person.len());
        for b in self.person.bytes() {
            if plain_person_byte(b) {
                person.push(char::from(b));
            } else {
                person.push_str(&format!("%{b:02X}"));
            }
        }
        format!(
            "kind={};city={};org={};person={person}",
            self.kind, self.city, self.org
        )
    }

    /// Parses [`Self::encode`]'s form; the error names what is wrong.
    pub fn parse(v: &str) -> Result<VouchedPrincipal, String> {
        let (mut kind, mut city, mut org, mut person) = (None, None, None, None);
        for part in v.split(';') {
            let (k, val) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("{PRINCIPAL}: `{part}` is not key=value"))?;
            match k {
                "kind" => {
                    kind = Some(PersonKind::parse(val).ok_or_else(|| {
                        format!("{PRINCIPAL}: kind `{val}` is not official, citizen or system")
                    })?)
                }
                "city" => city = Some(val.to_string()),
                "org" => org = Some(val.to_string()),
                "person" => person = Some(percent_decode(val)?),
                _ => {} // later additions are ignored by older providers
            }
        }
        let need = |what: &str| format!("{PRINCIPAL} has no `{what}`");
        Ok(VouchedPrincipal {
            kind: kind.ok_or_else(|| need("kind"))?,
            city: city.filter(|c| !c.is_empty()).ok_or_else(|| need("city"))?,
            org: org.filter(|o| !o.is_empty()).ok_or_else(|| need("org"))?,
            person: person.unwrap_or_default(),
        })
    }

    /// `city/org`, the form of [`CALLER`] and of policy rules.
    pub fn caller(&self) -> String {
        format!("{}/{}", self.city, self.org)
    }

    pub fn is_citizen(&self) -> bool {
        self.kind == PersonKind::Citizen
    }
}

fn percent_decode(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = v
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{PRINCIPAL}: bad escape in person `{v}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{PRINCIPAL}: person is not utf-8"))
}

/// Whether `id` is a valid request id: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn is_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a lowercase id (organisation ids and purposes): 1 to `max` characters of
/// lowercase ascii letters, digits and `-`, starting with a letter.
pub fn check_lowercase_id(v: &str, max: usize) -> Result<(), String> {
    if v.is_empty() || v.len() > max {
        return Err(format!("`{v}` must have 1 to {max} characters"));
    }
    let first_ok = v.as_bytes()[0].is_ascii_lowercase();
    let rest_ok = v
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !first_ok || !rest_ok {
        return Err(format!(
            "`{v}` must be lowercase ascii letters, digits and '-', starting with a letter"
        ));
    }
    Ok(())
}

/// Checks a catalog code: 1 to 32 uppercase letters, digits and `-` (e.g. `JQ-08`).
pub fn check_catalog_code(c: &str) -> Result<(), String> {
    let ok = !c.is_empty()
        && c.len() <= 32
        && c.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "catalog code `{c}` must be 1 to 32 uppercase letters, digits and '-'"
        ))
    }
}

const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK: &[u8; 11] = b"10X98765432";

/// The GB 11643 check character of 17 digits.
pub fn resident_id_check_digit(first17: &str) -> Option<char> {
    let b = first17.as_bytes();
    if b.len() != 17 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sum: u32 = b
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    Some(char::from(CHECK[(sum % 11) as usize]))
}

/// Checks an 18-character resident identity number (GB 11643 check character, `x` or `X`).
/// The error never repeats the id.
pub fn check_resident_id(id: &str) -> Result<(), String> {
    let b = id.as_bytes();
    if b.len() != 18 {
        return Err(format!(
            "{SUBJECT} must be an 18-character resident identity number (got {} characters)",
            id.chars().count()
        ));
    }
    if !b[..17].iter().all(u8::is_ascii_digit) {
        return Err(format!("{SUBJECT}: the first 17 characters must be digits"));
    }
    let expected = resident_id_check_digit(&id[..17]).map(|c| c as u8);
    if Some(b[17].to_ascii_uppercase()) != expected {
        return Err(format!("{SUBJECT}: check digit does not match (GB 11643)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_vouched_principal_round_trips_any_person_id() {
        for person in ["zhang.wei", "工号 0042;kind=system", "", "a%b=c"] {
            let p = super::VouchedPrincipal {
                kind: super::PersonKind::Official,
                city: "jinan".into(),
                org: "hrss".into(),
                person: person.into(),
            };
            let v = p.encode();
            assert!(v.is_ascii(), "{v}");
            assert_eq!(super::VouchedPrincipal::parse(&v).unwrap(), p, "{v}");
        }
        assert!(super::VouchedPrincipal::parse("kind=boss;city=a;org=b").is_err());
        assert!(super::VouchedPrincipal::parse("kind=citizen;org=b").is_err());
        assert!(super::VouchedPrincipal::parse("kind=citizen;city=a;org=b;person=%G1").is_err());
    }

    use super::*;

    #[test]
    fn rules() {
        assert!(is_request_id(b"a.b_c-1"));
        assert!(!is_request_id(b""));
        assert!(!is_request_id(&[b'a'; 65]));
        assert!(!is_request_id(b"a b"));
        assert!(check_lowercase_id("case-handling", 64).is_ok());
        assert!(check_lowercase_id("CASE-HANDLING", 64).is_err());
        assert!(check_catalog_code("JQ-08").is_ok());
        assert!(check_catalog_code("jq-08").is_err());
        // GB 11643's worked example.
        assert_eq!(resident_id_check_digit("11010519491231002"), Some('X'));
        let id = "11010519491231002X";
        assert!(check_resident_id(id).is_ok());
        assert!(check_resident_id(&id[..17]).is_err());
        let bad = format!("{}{}", &id[..17], if id.ends_with('0') { '1' } else { '0' });
        assert!(check_resident_id(&bad).is_err());
    }
}
