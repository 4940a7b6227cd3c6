//! Form fields and the checks of their values. Messages name what is wrong and never repeat
//! an identity number.

use crate::divisions::Divisions;
use regex::Regex;
use time::macros::format_description;

/// One form field of an item.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub kind: FieldType,
    pub required: bool,
    /// A valid value (checked when the catalog loads).
    pub example: String,
}

/// A field's type and its validation.
#[derive(Debug, Clone)]
pub enum FieldType {
    /// Free text; `pattern` must match the whole value; `max_len` in characters;
    /// `multiline` lets a value hold line breaks (`\n`). Never a control character or a
    /// bidirectional override ([`unclean`]).
    Text {
        pattern: Option<Regex>,
        max_len: Option<usize>,
        multiline: bool,
    },
    /// One of `values`.
    Enum(Vec<String>),
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// A GB 11643 resident identity number.
    ResidentId,
    /// A GB 32100 unified social credit code.
    CreditCode,
    /// A GB/T 2260 administrative division code (six digits).
    DivisionCode,
    /// A mainland mobile number.
    Phone,
    /// A whole number within bounds.
    Integer { min: Option<i64>, max: Option<i64> },
}

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub reason: String,
}

/// The type names a catalog file may use.
pub const TYPE_NAMES: &[&str] = &[
    "text",
    "enum",
    "date",
    "resident-id",
    "credit-code",
    "division-code",
    "phone",
    "integer",
];

/// Longest value of any field (text fields are further bounded by `max_len`).
pub const MAX_VALUE_CHARS: usize = 2048;

impl FieldType {
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::Text { .. } => "text",
            FieldType::Enum(_) => "enum",
            FieldType::Date => "date",
            FieldType::ResidentId => "resident-id",
            FieldType::CreditCode => "credit-code",
            FieldType::DivisionCode => "division-code",
            FieldType::Phone => "phone",
            FieldType::Integer { .. } => "integer",
        }
    }

    /// The validation in words (for listings and docs).
    pub fn describe(&self) -> String {
        match self {
            FieldType::Text {
                pattern,
                max_len,
                multiline,
            } => {
                let mut parts = Vec::new();
                if *multiline {
                    parts.push("line breaks allowed".to_string());
                }
                if let Some(re) = pattern {
                    parts.push(format!("pattern {}", pattern_text(re)));
                }
                if let Some(n) = max_len {
                    parts.push(format!("at most {n} characters"));
                }
                parts.join(", ")
            }
            FieldType::Enum(values) => format!("one of: {}", values.join(", ")),
            FieldType::Date => "YYYY-MM-DD".into(),
            FieldType::ResidentId => "GB 11643 resident identity number".into(),
            FieldType::CreditCode => "GB 32100 unified social credit code".into(),
            FieldType::DivisionCode => "GB/T 2260 division code".into(),
            FieldType::Phone => "mainland mobile number".into(),
            FieldType::Integer { min, max } => match (min, max) {
                (Some(a), Some(b)) => format!("{a} to {b}"),
                (Some(a), None) => format!("at least {a}"),
                (None, Some(b)) => format!("at most {b}"),
                (None, None) => "a whole number".into(),
            },
        }
    }

    /// Checks a value against the embedded division table; see [`Self::check_in`].
    pub fn check(&self, v: &str) -> Result<(), String> {
        let table = Divisions::embedded().map_err(|e| e.to_string())?;
        self.check_in(v, table)
    }

    /// Checks a value (in NFC, see [`normalise`]) with the division codes of `divisions`;
    /// the error says what is expected.
    pub fn check_in(&self, v: &str, divisions: &Divisions) -> Result<(), String> {
        if v.chars().count() > MAX_VALUE_CHARS {
            return Err(format!("longer than {MAX_VALUE_CHARS} characters"));
        }
        let multiline = matches!(
            self,
            FieldType::Text {
                multiline: true,
                ..
            }
        );
        if let Some(why) = unclean(v, multiline) {
            return Err(why);
        }
        match self {
            FieldType::Text {
                pattern, max_len, ..
            } => {
                if let Some(max) = max_len {
                    let n = v.chars().count();
                    if n > *max {
                        return Err(format!("{n} characters, at most {max} allowed"));
                    }
                }
                match pattern {
                    Some(re) if !re.is_match(v) => {
                        Err(format!("does not match the pattern {}", pattern_text(re)))
                    }
                    _ => Ok(()),
                }
            }
            FieldType::Enum(values) => {
                if values.iter().any(|x| x == v) {
                    Ok(())
                } else {
                    Err(format!("must be one of: {}", values.join(", ")))
                }
            }
            FieldType::Date => parse_date(v).map(|_| ()),
            FieldType::ResidentId => check_resident_id(v, divisions),
            FieldType::CreditCode => check_credit_code(v, divisions),
            FieldType::DivisionCode => check_division_code(v, divisions),
            FieldType::Phone => {
                let b = v.as_bytes();
                let ok = b.len() == 11
                    && b[0] == b'1'
                    && (b'3'..=b'9').contains(&b[1])
                    && b.iter().all(u8::is_ascii_digit);
                if ok {
                    Ok(())
                } else {
                    Err("must be an 11-digit mainland mobile number (1[3-9]…)".into())
                }
            }
            FieldType::Integer { min, max } => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| "must be a whole number".to_string())?;
                if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                    return Err(format!(
                        "must be between {} and {}",
                        min.map_or("-∞".into(), |m| m.to_string()),
                        max.map_or("∞".into(), |m| m.to_string())
                    ));
                }
                Ok(())
            }
        }
    }
}

/// The pattern as the operator wrote it (without the anchors the loader adds).
fn pattern_text(re: &Regex) -> &str {
    let s = re.as_str();
    s.strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(s)
}

/// Parses `YYYY-MM-DD`.
/// A date `YYYY-MM-DD`. A value of that shape that is no day of the calendar
/// (`2027-02-30`) is told so, apart from a malformed one.
pub fn parse_date(v: &str) -> Result<time::Date, String> {
    let b = v.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shaped {
        return Err("must be a date YYYY-MM-DD".to_string());
    }
    time::Date::parse(v, format_description!("[year]-[month]-[day]")).map_err(|_| {
        let (year, month, day) = (&v[..4], &v[5..7], &v[8..]);
        let month_n: u8 = month.parse().unwrap_or(0);
        match time::Month::try_from(month_n) {
            Err(_) => format!("{v} is not a day of the calendar: there is no month {month}"),
            Ok(m) => {
                let days = year.parse::<i32>().ok().map(|y| m.length(y));
                match days {
                    Some(n) => format!(
                        "{v} is not a day of the calendar: {m} {year} has {n} days, not {day}"
                    ),
                    None => format!("{v} is not a day of the calendar"),
                }
            }
        }
    })
}

/// Why a text value is not clean: a C0 or C1 control character (a line break only where the
/// field allows it) or a bidirectional embedding, override or isolate, which would make
/// what a reader sees differ from what is stored and signed. `None` when clean.
pub fn unclean(v: &str, multiline: bool) -> Option<String> {
    v.chars().find_map(|c| {
        let control = c.is_control() && !(multiline && c == '\n');
        let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        (control || bidi).then(|| {
            let what = if bidi {
                "a bidirectional override"
            } else {
                "a control character"
            };
            format!(
                "holds {what} (U+{:04X}), which is not allowed",
                u32::from(c)
            )
        })
    })
}

/// The form in which values are checked, stored and signed: Unicode NFC, so that the same
/// text typed on two systems (composed or decomposed) is one value.
pub fn normalise(v: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    if unicode_normalization::is_nfc(v) {
        v.to_string()
    } else {
        v.nfc().collect()
    }
}

/// GB 11643: 17 digits (a division code, a birth date, a sequence) and a check character.
/// The division code is the one of the place of first issue, current or not
/// ([`Divisions::fits_resident_id`]).
pub fn check_resident_id(v: &str, divisions: &Divisions) -> Result<(), String> {
    let b = v.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return Err("must be an 18-character resident identity number (GB 11643)".into());
    }
    let expected = tongban_proto::metadata::resident_id_check_digit(&v[..17]).map(|c| c as u8);
    if Some(b[17].to_ascii_uppercase()) != expected {
        return Err("check character does not match (GB 11643)".into());
    }
    let birth = format!("{}-{}-{}", &v[6..10], &v[10..12], &v[12..14]);
    parse_date(&birth).map_err(|_| "holds no valid birth date (GB 11643)".to_string())?;
    let year: u32 = v[6..10].parse().unwrap_or(0);
    if !divisions.fits_resident_id(&v[..6], year) {
        return Err(format!(
            "does not start with a division code of GB/T 2260 ({} is in no revision from {} to {})",
            &v[..6],
            divisions.oldest,
            divisions.version
        ));
    }
    Ok(())
}

/// The 31 characters of GB 32100 codes (no I, O, S, V, Z), in value order.
const CREDIT_CHARS: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const CREDIT_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// The GB 32100 check character of the first 17 characters, if they are valid.
pub fn credit_code_check_char(first17: &str) -> Option<char> {
    let b = first17.as_bytes();
    if b.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    for (c, w) in b.iter().zip(CREDIT_WEIGHTS) {
        let value = CREDIT_CHARS.iter().position(|x| x == c)?;
        sum += u32::try_from(value).ok()? * w;
    }
    let check = (31 - sum % 31) % 31;
    CREDIT_CHARS
        .get(usize::try_from(check).ok()?)
        .map(|c| char::from(*c))
}

/// GB 32100: 18 characters: registration authority, entity type, a division code, the
/// organisation code and a check character.
/// GB 32100: 18 characters, a check character, and the registering authority's division.
pub fn check_credit_code(v: &str, divisions: &Divisions) -> Result<(), String> {
    if v.len() != 18 || !v.bytes().all(|c| CREDIT_CHARS.contains(&c)) {
        return Err(
            "must be an 18-character unified social credit code of 0-9 and A-Y without I, O, S, V, Z (GB 32100)"
                .into(),
        );
    }
    if credit_code_check_char(&v[..17]) != v[17..].chars().next() {
        return Err("check character does not match (GB 32100)".into());
    }
    // The registering authority's division at registration (a former code included), or
    // 100000 for the national authorities.
    let authority = &v[2..8];
    if authority == "100000" || divisions.ever_existed(authority) {
        Ok(())
    } else {
        Err(format!(
            "characters 3–8 ({authority}) are no division code of GB/T 2260 (GB 32100)"
        ))
    }
}

/// GB/T 2260: six digits, a code in use in the newest revision of `divisions` (a field
/// names a place today).
pub fn check_division_code(v: &str, divisions: &Divisions) -> Result<(), String> {
    let b = v.as_bytes();
    if b.len() != 6 || !b.iter().all(u8::is_ascii_digit) {
        return Err("must be a six-digit administrative division code (GB/T 2260)".into());
    }
    if divisions.is_current(v) {
        Ok(())
    } else if divisions.ever_existed(v) {
        Err(format!(
            "{v} is no longer in use (GB/T 2260, revision {}): give today's code",
            divisions.version
        ))
    } else {
        Err(format!(
            "{v} is not a division code of GB/T 2260 (revision {})",
            divisions.version
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn d() -> &'static Divisions {
        Divisions::embedded().unwrap()
    }

    #[test]
    fn credit_codes() {
        // A published code (Haier Group) and one with its check character changed.
        assert!(check_credit_code("91370200163562681G", d()).is_ok());
        assert!(check_credit_code("91370200163562681H", d()).is_err());
        assert!(check_credit_code("91370200163562681", d()).is_err());
        assert!(check_credit_code("9137020016356268IG", d()).is_err());
        let with_check =
            |first17: &str| format!("{first17}{}", credit_code_check_char(first17).unwrap());
        // The registering authority: a division of GB/T 2260 (a former one too), or the
        // national authorities' 100000; never an invented one.
        assert!(check_credit_code(&with_check("91370181163562681"), d()).is_ok());
        assert!(check_credit_code(&with_check("11100000000013127"), d()).is_ok());
        let e = check_credit_code(&with_check("91379901163562681"), d()).unwrap_err();
        assert!(e.contains("379901"), "{e}");
    }

    #[test]
    fn division_codes() {
        assert!(check_division_code("370102", d()).is_ok());
        assert!(check_division_code("370000", d()).is_ok());
        assert!(check_division_code("990102", d()).is_err());
        assert!(check_division_code("370012", d()).is_err());
        assert!(check_division_code("3701", d()).is_err());
        // Shape alone no longer passes: Shandong has no prefecture 99.
        let e = check_division_code("379901", d()).unwrap_err();
        assert!(e.contains("not a division code"), "{e}");
        // A former code: named as such.
        let e = check_division_code("370181", d()).unwrap_err();
        assert!(e.contains("no longer in use"), "{e}");
    }

    #[test]
    fn resident_ids() {
        let first = "37010219850312002";
        let c = tongban_proto::metadata::resident_id_check_digit(first).unwrap();
        assert!(check_resident_id(&format!("{first}{c}"), d()).is_ok());
        // A bad birth date with a matching check character.
        let bad = "37010219851312002";
        let c = tongban_proto::metadata::resident_id_check_digit(bad).unwrap();
        assert!(check_resident_id(&format!("{bad}{c}"), d()).is_err());
        let id = |first17: &str| {
            let c = tongban_proto::metadata::resident_id_check_digit(first17).unwrap();
            format!("{first17}{c}")
        };
        // Issued in 章丘市 (370181, abolished 2016): still a valid id.
        assert!(check_resident_id(&id("37018119900101001"), d()).is_ok());
        // An unknown county of a known prefecture: only before the oldest revision.
        assert!(check_resident_id(&id("37018819800101001"), d()).is_ok());
        assert!(check_resident_id(&id("37018820100101001"), d()).is_err());
        // No such prefecture, ever.
        let e = check_resident_id(&id("37990119800101001"), d()).unwrap_err();
        assert!(e.contains("GB/T 2260"), "{e}");
    }

    #[test]
    fn impossible_dates_are_told_apart_from_malformed_ones() {
        let e = FieldType::Date.check("2027-02-30").unwrap_err();
        assert!(e.contains("not a day of the calendar"), "{e}");
        assert!(e.contains("February 2027 has 28 days"), "{e}");
        let e = FieldType::Date.check("2028-02-30").unwrap_err();
        assert!(e.contains("29 days"), "{e}");
        let e = FieldType::Date.check("2027-13-01").unwrap_err();
        assert!(e.contains("no month 13"), "{e}");
        for malformed in ["2027-2-3", "27-02-03", "2027/02/03", "２０２７-02-03", ""] {
            let e = FieldType::Date.check(malformed).unwrap_err();
            assert_eq!(e, "must be a date YYYY-MM-DD", "{malformed}");
        }
        assert!(FieldType::Date.check("2028-02-29").is_ok());
    }

    #[test]
    fn text_refuses_control_characters_and_bidi_overrides() {
        let one_line = FieldType::Text {
            pattern: None,
            max_len: Some(30),
            multiline: false,
        };
        assert!(one_line.check("王秀英").is_ok());
        for bad in [
            "王\u{0}秀英",
            "王秀\u{1b}[2J英",
            "王秀英\n",
            "tab\there",
            "c1\u{85}",
            "del\u{7f}",
            "abc\u{202E}fed",
            "x\u{2066}y",
        ] {
            let e = one_line.check(bad).unwrap_err();
            assert!(e.contains("U+"), "{bad:?}: {e}");
        }
        let lines = FieldType::Text {
            pattern: None,
            max_len: None,
            multiline: true,
        };
        assert!(lines.check("第一行\n第二行").is_ok());
        assert!(lines.check("第一行\r\n第二行").is_err());
        // Every other type refuses them too (an enum, a date: their shapes already would).
        assert!(FieldType::Phone.check("1380531000\u{0}").is_err());
    }

    #[test]
    fn values_are_checked_and_kept_in_nfc() {
        // "é" decomposed (e + combining acute) becomes the composed character.
        assert_eq!(normalise("Jose\u{301}"), "Jos\u{e9}");
        assert_eq!(normalise("王秀英"), "王秀英");
    }

    #[test]
    fn other_types() {
        assert!(FieldType::Phone.check("13805310001").is_ok());
        assert!(FieldType::Phone.check("12805310001").is_err());
        assert!(FieldType::Date.check("2026-02-30").is_err());
        let i = FieldType::Integer {
            min: Some(1),
            max: Some(9),
        };
        assert!(i.check("9").is_ok() && i.check("10").is_err() && i.check("x").is_err());
    }
}
