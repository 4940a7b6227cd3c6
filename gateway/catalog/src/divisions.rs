//! The administrative division codes of GB/T 2260 as data: every code of the Ministry of
//! Civil Affairs' revisions, with the first and the last revision that list it
//! (`deploy/divisions/gb2260.csv`, built by `deploy/divisions/build.py`). Operators replace
//! the file when a new revision is published and check it with
//! `tongban catalog check-divisions FILE`; a catalog names it with `divisions = "FILE"`.
//!
//! The rules that use it:
//! - a `division-code` field names a place today: a code of the newest revision;
//! - the address part of a GB 11643 resident id is the code of the place where the id was
//!   first issued, which may have changed since: a code of any revision; an id of someone
//!   born before the oldest revision may carry a county code older than the table, so for it
//!   a known prefecture (or province) is enough;
//! - characters 3–8 of a GB 32100 credit code are the registering authority's division, at
//!   registration: a code of any revision, or `100000` for the national authorities.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The table shipped with Tongban.
pub const EMBEDDED: &str = include_str!("../../../deploy/divisions/gb2260.csv");

/// One code: the revisions (`YYYYMM`) it first and last appears in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    first: u32,
    last: u32,
}

/// A loaded table of division codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divisions {
    /// The newest revision (`YYYYMM`).
    pub version: u32,
    /// The oldest revision.
    pub oldest: u32,
    codes: HashMap<u32, Span>,
}

/// Why a table does not load, naming the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("division table, line {line}: {message}")]
pub struct DivisionsError {
    pub line: usize,
    pub message: String,
}

impl Divisions {
    /// The embedded table (checked by this crate's tests).
    pub fn embedded() -> Result<&'static Divisions, DivisionsError> {
        static TABLE: OnceLock<Result<Divisions, DivisionsError>> = OnceLock::new();
        TABLE
            .get_or_init(|| Divisions::parse(EMBEDDED))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Parses `code,name,first,last` rows (a header row, `#` comment lines).
    pub fn parse(text: &str) -> Result<Divisions, DivisionsError> {
        let mut codes = HashMap::new();
        let mut header = false;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |message: String| DivisionsError { line, message };
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if !header {
                if l != "code,name,first,last" {
                    return Err(err(format!(
                        "the header must be `code,name,first,last`, not `{l}`"
                    )));
                }
                header = true;
                continue;
            }
            let cols: Vec<&str> = l.split(',').collect();
            let [code, name, first, last] = cols[..] else {
                return Err(err(format!("{} columns, 4 expected", cols.len())));
            };
            if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(format!("code `{code}` is not six digits")));
            }
            if name.trim().is_empty() {
                return Err(err(format!("code {code} has no name")));
            }
            let revision = |v: &str| {
                v.parse::<u32>()
                    .ok()
                    .filter(|r| (190001..=299912).contains(r) && (1..=12).contains(&(r % 100)))
                    .ok_or_else(|| err(format!("`{v}` is not a revision YYYYMM")))
            };
            let span = Span {
                first: revision(first)?,
                last: revision(last)?,
            };
            if span.first > span.last {
                return Err(err(format!("code {code}: first {first} after last {last}")));
            }
            let code: u32 = code
                .parse()
                .map_err(|_| err(format!("code `{code}` is not six digits")))?;
            if codes.insert(code, span).is_some() {
                return Err(err(format!("code {code} appears twice")));
            }
        }
        if !header {
            return Err(DivisionsError {
                line: 0,
                message: "no header row `code,name,first,last`".into(),
            });
        }
        let version = codes.values().map(|s| s.last).max().unwrap_or(0);
        let oldest = codes.values().map(|s| s.first).min().unwrap_or(0);
        if codes.is_empty() {
            return Err(DivisionsError {
                line: 0,
                message: "no codes".into(),
            });
        }
        Ok(Divisions {
            version,
            oldest,
            codes,
        })
    }

    pub fn len(&self) -> usize {
        self.codes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// Codes in use in the newest revision.
    pub fn current_len(&self) -> usize {
        self.codes
            .values()
            .filter(|s| s.last == self.version)
            .count()
    }

    fn span(&self, code: &str) -> Option<Span> {
        code.parse::<u32>()
            .ok()
            .filter(|_| code.len() == 6)
            .and_then(|c| self.codes.get(&c).copied())
    }

    /// In use in the newest revision.
    pub fn is_current(&self, code: &str) -> bool {
        self.span(code).is_some_and(|s| s.last == self.version)
    }

    /// Listed by any revision (historical codes included).
    pub fn ever_existed(&self, code: &str) -> bool {
        self.span(code).is_some()
    }

    /// The address part of a resident id of someone born in `birth_year`: a code of any
    /// revision; before the oldest revision, a known prefecture or province suffices.
    pub fn fits_resident_id(&self, code: &str, birth_year: u32) -> bool {
        if self.ever_existed(code) {
            return true;
        }
        if birth_year >= self.oldest / 100 || code.len() != 6 {
            return false;
        }
        let prefecture = format!("{}00", &code[..4]);
        let province = format!("{}0000", &code[..2]);
        self.ever_existed(&prefecture)
            || (code[2..].starts_with("00") && self.ever_existed(&province))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_embedded_table_knows_today_and_history() {
        let d = Divisions::embedded().unwrap();
        assert_eq!(d.version, 202101);
        assert_eq!(d.oldest, 200212);
        assert!(d.current_len() > 3000, "{}", d.current_len());
        // 章丘市 became 章丘区 in 2016: only the new code is current, both existed.
        assert!(d.is_current("370114") && !d.is_current("370181"));
        assert!(d.ever_existed("370181"));
        // Shandong has no prefecture 99.
        assert!(!d.ever_existed("379901"));
        assert!(d.is_current("370202") && d.is_current("370000"));
        // Before the oldest revision: a known prefecture suffices for a resident id.
        assert!(d.fits_resident_id("370181", 1985));
        assert!(d.fits_resident_id("370188", 1985));
        assert!(!d.fits_resident_id("370188", 2005));
        assert!(!d.fits_resident_id("379988", 1985));
    }

    #[test]
    fn a_bad_table_is_refused_naming_the_line() {
        let e = Divisions::parse("code,name,first,last\n37010,x,200212,202101\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = Divisions::parse("code,name,first,last\n370102,x,202113,202101\n").unwrap_err();
        assert!(e.message.contains("revision"), "{e}");
        let e = Divisions::parse("code,name,first,last\n370102,x,202101,200212\n").unwrap_err();
        assert!(e.message.contains("after"), "{e}");
        let e = Divisions::parse(
            "# c\ncode,name,first,last\n370102,a,200212,202101\n370102,b,200212,202101\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4);
        assert!(Divisions::parse("370102,x,200212,202101\n").is_err());
    }
}
