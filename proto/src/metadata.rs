//! The `x-tongban-*` metadata of a federated call, and its parsing: defined once, here, so
//! that nodes, providers, clients and portals agree on names and rules.
//!
//! Set by callers: [`TARGET_CITY`], [`TARGET_ORG`], [`REQUEST_ID`], [`PURPOSE`],
//! [`SUBJECT`], [`CONSENT`], [`CATALOG_CODE`]. Set by nodes only (a caller's value is
//! dropped or overwritten): [`ORIGIN_CITY`], [`CALLER`], [`CALLER_ASSERTION`], and the
//! [`RECEIPT`] trailer.

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
/// Node only: the home node's signed caller assertion, node to node.
pub const CALLER_ASSERTION: &str = "x-tongban-caller-assertion";
/// Node only, trailer: the providing node's signed receipt of the exchange.
pub const RECEIPT: &str = "x-tongban-receipt";

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
