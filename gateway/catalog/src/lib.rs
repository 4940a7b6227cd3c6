//! The federation's business catalog: the cross-city items (跨市通办) that cities agreed to
//! handle for each other, as the operators keep them in `deploy/catalog/*.toml`.
//!
//! One loader for everyone who needs the catalog: nodes route `x-tongban-catalog-code` calls
//! and list it, providers validate applications against its form fields, compute due dates
//! with its working-day [`Calendar`] and describe what an application produces. A file that
//! does not load is refused with an error naming the item and the key, so an operator's typo
//! stops a start instead of becoming a wrong answer at run time.

pub mod bundle;
mod calendar;
pub mod divisions;
mod fields;
mod load;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use calendar::{cst_date, Calendar, CST};
pub use divisions::Divisions;
pub use fields::{credit_code_check_char, normalise, unclean, Field, FieldType, Violation};
pub use load::LoadError;

/// The Jinan–Qingdao catalog shipped with Tongban (`deploy/catalog/jinan-qingdao.toml`): the
/// embedded default of nodes and providers when no file is configured.
pub const EMBEDDED: &str = include_str!("../../../deploy/catalog/jinan-qingdao.toml");

/// What a completed application produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Produces {
    /// An electronic certificate or licence (电子证照).
    Certificate,
    /// An extract of a register (记录证明).
    RecordExtract,
    /// The confirmation that an account or relation was transferred (转移接续确认).
    TransferConfirmation,
}

impl Produces {
    pub const ALL: [(&'static str, Produces); 3] = [
        ("certificate", Produces::Certificate),
        ("record-extract", Produces::RecordExtract),
        ("transfer-confirmation", Produces::TransferConfirmation),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Produces::Certificate => "certificate",
            Produces::RecordExtract => "record-extract",
            Produces::TransferConfirmation => "transfer-confirmation",
        }
    }
}

/// An organisation's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organisation {
    pub id: String,
    pub name_zh: String,
    pub name_en: String,
}

/// A data item of the catalog (`[[data_items]]`): an exchange of a citizen's data that is
/// not an application, such as querying the mutually recognised medical results. It has no
/// form; it names the gRPC service that serves it, so that a consent can name it and a call
/// can be routed and checked by it like any item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataItem {
    pub code: String,
    pub name_zh: String,
    pub name_en: String,
    pub category: String,
    /// The full proto name of the service that serves the item.
    pub service: String,
    /// The providing organisation in each city (city → organisation id).
    pub providers: BTreeMap<String, String>,
    /// Whether the exchange carries personal data (a citizen's consent is needed).
    pub personal_data: bool,
}

/// One catalog item.
#[derive(Debug, Clone)]
pub struct Item {
    pub code: String,
    pub name_zh: String,
    pub name_en: String,
    pub category: String,
    /// The providing organisation in each city (city → organisation id).
    pub providers: BTreeMap<String, String>,
    /// Whether applications carry personal data (a citizen's consent is needed).
    pub personal_data: bool,
    pub produces: Produces,
    /// The statutory time limit, in working days.
    pub time_limit_days: u32,
    /// How long the resulting document is valid, in days.
    pub valid_days: u32,
    /// Kinds of material an application must reference.
    pub materials: Vec<String>,
    pub fields: Vec<Field>,
    /// The division codes its fields are checked against (the catalog's table).
    pub divisions: Arc<Divisions>,
}

impl Item {
    /// The organisation providing this item in `city`.
    pub fn provider_in(&self, city: &str) -> Option<&str> {
        self.providers.get(city).map(String::as_str)
    }

    /// Checks submitted form fields: every required field present, every value valid for its
    /// type, no field the item does not define. Returns every violation, not just the first.
    pub fn validate(&self, values: &BTreeMap<String, String>) -> Vec<Violation> {
        let mut out = Vec::new();
        for f in &self.fields {
            match values.get(&f.name).map(|v| v.trim()) {
                None | Some("") if f.required => out.push(Violation {
                    field: f.name.clone(),
                    reason: format!("{} is required for {}", f.name, self.code),
                }),
                None | Some("") => {}
                Some(v) => {
                    if let Err(reason) = f.kind.check_in(v, &self.divisions) {
                        out.push(Violation {
                            field: f.name.clone(),
                            reason: format!("{}: {reason}", f.name),
                        });
                    }
                }
            }
        }
        for name in values.keys() {
            if !self.fields.iter().any(|f| &f.name == name) {
                out.push(Violation {
                    field: name.clone(),
                    reason: format!("{name} is not a field of {}", self.code),
                });
            }
        }
        out
    }

    /// The examples of every field: a valid application's fields (demo, tests, docs).
    pub fn example_fields(&self) -> BTreeMap<String, String> {
        self.fields
            .iter()
            .map(|f| (f.name.clone(), f.example.clone()))
            .collect()
    }
}

/// A loaded, validated catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub federation: String,
    pub version: String,
    pub cities: Vec<String>,
    pub organisations: BTreeMap<String, Organisation>,
    pub calendar: Calendar,
    /// The GB/T 2260 division codes (`divisions = "FILE"`, else the embedded table).
    pub divisions: Arc<Divisions>,
    items: Vec<Item>,
    data_items: Vec<DataItem>,
    /// "One thing" bundles of items (`[[bundles]]`).
    pub bundles: Vec<bundle::Bundle>,
    /// SHA-256 (hex) of the catalog file's text, as loaded.
    pub digest: String,
    /// The file it was loaded from, or "embedded".
    pub source: String,
}

impl Catalog {
    /// The embedded Jinan–Qingdao catalog. It is checked by this crate's tests, so a failure
    /// here is a build defect; it is still reported, never a panic.
    pub fn embedded() -> Result<Catalog, LoadError> {
        Catalog::parse(EMBEDDED)
    }

    /// Loads a catalog file.
    pub fn load(path: &std::path::Path) -> Result<Catalog, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut c = load::parse(&text, path.parent())?;
        c.source = path.display().to_string();
        Ok(c)
    }

    /// Loads `path`, or the embedded catalog when `None`.
    pub fn load_or_embedded(path: Option<&std::path::Path>) -> Result<Catalog, LoadError> {
        match path {
            Some(p) => Catalog::load(p),
            None => Catalog::embedded(),
        }
    }

    /// Parses and validates catalog text.
    pub fn parse(text: &str) -> Result<Catalog, LoadError> {
        load::parse(text, None)
    }

    /// Every item, in file order.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    pub fn bundle(&self, code: &str) -> Option<&bundle::Bundle> {
        self.bundles.iter().find(|b| b.code == code)
    }

    pub fn item(&self, code: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.code == code)
    }

    /// Every data item, in file order.
    pub fn data_items(&self) -> &[DataItem] {
        &self.data_items
    }

    pub fn data_item(&self, code: &str) -> Option<&DataItem> {
        self.data_items.iter().find(|i| i.code == code)
    }

    /// Whether an item or data item `code` handles personal data; `None` when the catalog
    /// has no such code. The node's one question about a code.
    pub fn personal_data(&self, code: &str) -> Option<bool> {
        self.item(code)
            .map(|i| i.personal_data)
            .or_else(|| self.data_item(code).map(|d| d.personal_data))
    }

    /// The names of an item or data item (zh, en).
    pub fn names(&self, code: &str) -> Option<(&str, &str)> {
        self.item(code)
            .map(|i| (i.name_zh.as_str(), i.name_en.as_str()))
            .or_else(|| {
                self.data_item(code)
                    .map(|d| (d.name_zh.as_str(), d.name_en.as_str()))
            })
    }

    /// The items `org` of `city` provides.
    pub fn items_of<'a>(&'a self, city: &'a str, org: &'a str) -> impl Iterator<Item = &'a Item> {
        self.items
            .iter()
            .filter(move |i| i.provider_in(city) == Some(org))
    }

    /// The names of an organisation (the id itself when the catalog does not list it).
    pub fn organisation(&self, id: &str) -> Option<&Organisation> {
        self.organisations.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_loads_with_27_items_each_example_valid() {
        let c = Catalog::embedded().unwrap();
        assert_eq!(c.items().len(), 27);
        for (n, item) in c.items().iter().enumerate() {
            assert_eq!(item.code, format!("JQ-{:02}", n + 1));
            assert!(
                item.validate(&item.example_fields()).is_empty(),
                "{}",
                item.code
            );
            for city in ["jinan", "qingdao"] {
                assert!(item.provider_in(city).is_some(), "{} {city}", item.code);
            }
        }
        assert_eq!(c.item("JQ-08").unwrap().provider_in("qingdao"), Some("gjj"));
        assert_eq!(c.items_of("jinan", "hrss").count(), 6);
    }

    #[test]
    fn validation_names_every_bad_field() {
        let c = Catalog::embedded().unwrap();
        let item = c.item("JQ-09").unwrap();
        let mut v = item.example_fields();
        v.remove("account_number");
        v.insert("amount_yuan".into(), "0".into());
        v.insert("property_division".into(), "99010".into());
        v.insert("colour".into(), "red".into());
        let bad: Vec<String> = item.validate(&v).into_iter().map(|x| x.field).collect();
        assert_eq!(
            bad,
            [
                "account_number",
                "property_division",
                "amount_yuan",
                "colour"
            ]
        );
    }
}
