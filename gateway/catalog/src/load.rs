//! Reading a catalog file key by key, so that every refusal names the item and the key an
//! operator has to fix (a generic deserializer would name a line at best).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use regex::Regex;
use toml::{Table, Value};

use crate::fields::{parse_date, Field, FieldType, TYPE_NAMES};
use crate::{Calendar, Catalog, DataItem, Divisions, Item, Organisation, Produces};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read catalog {path}: {message}")]
    Io { path: String, message: String },
    #[error("catalog is not valid toml: {0}")]
    Syntax(String),
    #[error("catalog key `{key}`: {message}")]
    Top { key: String, message: String },
    #[error("catalog item {item}, key `{key}`: {message}")]
    Item {
        item: String,
        key: String,
        message: String,
    },
    #[error("catalog bundle {bundle}, key `{key}`: {message}")]
    Bundle {
        bundle: String,
        key: String,
        message: String,
    },
}

const ITEM_KEYS: &[&str] = &[
    "code",
    "name_zh",
    "name_en",
    "category",
    "providers",
    "personal_data",
    "produces",
    "time_limit_days",
    "valid_days",
    "materials",
    "fields",
];
const DATA_ITEM_KEYS: &[&str] = &[
    "code",
    "name_zh",
    "name_en",
    "category",
    "service",
    "providers",
    "personal_data",
];
const FIELD_KEYS: &[&str] = &[
    "name",
    "type",
    "required",
    "example",
    "pattern",
    "max_len",
    "multiline",
    "values",
    "min",
    "max",
];

/// Where a key is being read: the top level or one item, for the error.
#[derive(Clone, Copy)]
enum At<'a> {
    Top,
    Item(&'a str),
}

impl At<'_> {
    fn err(self, key: impl Into<String>, message: impl Into<String>) -> LoadError {
        match self {
            At::Top => LoadError::Top {
                key: key.into(),
                message: message.into(),
            },
            At::Item(item) => LoadError::Item {
                item: item.to_string(),
                key: key.into(),
                message: message.into(),
            },
        }
    }
}

/// Typed access to a table's keys with errors that name them.
struct Keys<'a> {
    t: &'a Table,
    at: At<'a>,
    /// Prefix of the key in messages (`fields[2].`).
    prefix: String,
}

impl<'a> Keys<'a> {
    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn get(&self, key: &str) -> Result<&'a Value, LoadError> {
        self.t
            .get(key)
            .ok_or_else(|| self.at.err(self.name(key), "missing"))
    }

    fn only(&self, allowed: &[&str]) -> Result<(), LoadError> {
        match self.t.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(self.at.err(
                self.name(k),
                format!("unknown key (allowed: {})", allowed.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn string(&self, key: &str) -> Result<String, LoadError> {
        match self.get(key)? {
            Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            Value::String(_) => Err(self.at.err(self.name(key), "is empty")),
            other => Err(self.type_err(key, "a string", other)),
        }
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, LoadError> {
        match self.t.get(key) {
            None => Ok(None),
            Some(_) => self.string(key).map(Some),
        }
    }

    fn boolean(&self, key: &str) -> Result<bool, LoadError> {
        match self.get(key)? {
            Value::Boolean(b) => Ok(*b),
            other => Err(self.type_err(key, "true or false", other)),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, LoadError> {
        match self.t.get(key) {
            None => Ok(None),
            Some(_) => self.boolean(key).map(Some),
        }
    }

    fn int(&self, key: &str) -> Result<i64, LoadError> {
        match self.get(key)? {
            Value::Integer(i) => Ok(*i),
            other => Err(self.type_err(key, "a whole number", other)),
        }
    }

    fn opt_int(&self, key: &str) -> Result<Option<i64>, LoadError> {
        match self.t.get(key) {
            None => Ok(None),
            Some(_) => self.int(key).map(Some),
        }
    }

    fn days(&self, key: &str) -> Result<u32, LoadError> {
        let n = self.int(key)?;
        u32::try_from(n)
            .ok()
            .filter(|d| (1..=36500).contains(d))
            .ok_or_else(|| {
                self.at
                    .err(self.name(key), format!("{n} is not 1 to 36500 days"))
            })
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, LoadError> {
        match self.get(key)? {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                    other => Err(self.at.err(
                        format!("{}[{i}]", self.name(key)),
                        format!("expected a non-empty string, found {}", other.type_str()),
                    )),
                })
                .collect(),
            other => Err(self.type_err(key, "a list of strings", other)),
        }
    }

    fn table(&self, key: &str) -> Result<&'a Table, LoadError> {
        match self.get(key)? {
            Value::Table(t) => Ok(t),
            other => Err(self.type_err(key, "a table", other)),
        }
    }

    fn type_err(&self, key: &str, expected: &str, found: &Value) -> LoadError {
        self.at.err(
            self.name(key),
            format!("expected {expected}, found {}", found.type_str()),
        )
    }
}

fn id_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(crate) fn parse(text: &str, base: Option<&std::path::Path>) -> Result<Catalog, LoadError> {
    let t: Table = text
        .parse()
        .map_err(|e: toml::de::Error| LoadError::Syntax(e.to_string()))?;
    let top = Keys {
        t: &t,
        at: At::Top,
        prefix: String::new(),
    };
    top.only(&[
        "federation",
        "version",
        "cities",
        "organisations",
        "calendar",
        "items",
        "data_items",
        "bundles",
        "divisions",
    ])?;
    // The division table first: the items' examples are checked against it.
    let divisions = match top.opt_string("divisions")? {
        None => Divisions::embedded()
            .map(|d| Arc::new(d.clone()))
            .map_err(|e| top.at.err("divisions", e.to_string()))?,
        Some(file) => {
            let base = base.ok_or_else(|| {
                top.at.err(
                    "divisions",
                    "a division file is named only in a catalog file",
                )
            })?;
            let path = base.join(&file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                top.at
                    .err("divisions", format!("cannot read {}: {e}", path.display()))
            })?;
            Arc::new(
                Divisions::parse(&text)
                    .map_err(|e| top.at.err("divisions", format!("{}: {e}", path.display())))?,
            )
        }
    };
    let federation = top.string("federation")?;
    let version = top.string("version")?;
    let cities = top.strings("cities")?;
    for c in &cities {
        if !id_ok(c) {
            return Err(top.at.err("cities", format!("`{c}` is not a city id")));
        }
    }
    let organisations = organisations(&top)?;
    let calendar = match t.get("calendar") {
        None => Calendar::default(),
        Some(_) => calendar(&top)?,
    };
    let raw_items = match top.get("items")? {
        Value::Array(a) => a,
        other => return Err(top.type_err("items", "an array of [[items]]", other)),
    };
    let mut items: Vec<Item> = Vec::new();
    for (i, v) in raw_items.iter().enumerate() {
        let Value::Table(it) = v else {
            return Err(top.at.err(format!("items[{i}]"), "expected a table"));
        };
        let label = match it.get("code") {
            Some(Value::String(c)) => c.clone(),
            _ => format!("items[{i}]"),
        };
        let item = item(it, &label, &cities, &organisations, &divisions)?;
        if items.iter().any(|x| x.code == item.code) {
            return Err(LoadError::Item {
                item: item.code.clone(),
                key: "code".into(),
                message: "duplicate code (another item already has it)".into(),
            });
        }
        items.push(item);
    }
    let raw_data = match t.get("data_items") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(other) => return Err(top.type_err("data_items", "an array of [[data_items]]", other)),
    };
    let mut data_items: Vec<DataItem> = Vec::new();
    for (i, v) in raw_data.iter().enumerate() {
        let Value::Table(it) = v else {
            return Err(top.at.err(format!("data_items[{i}]"), "expected a table"));
        };
        let label = match it.get("code") {
            Some(Value::String(c)) => c.clone(),
            _ => format!("data_items[{i}]"),
        };
        let d = data_item(it, &label, &cities, &organisations)?;
        if items.iter().any(|x| x.code == d.code) || data_items.iter().any(|x| x.code == d.code) {
            return Err(LoadError::Item {
                item: d.code.clone(),
                key: "code".into(),
                message: "duplicate code (another item already has it)".into(),
            });
        }
        data_items.push(d);
    }
    let mut bundles: Vec<crate::bundle::Bundle> = Vec::new();
    match t.get("bundles") {
        None => {}
        Some(Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                let Value::Table(bt) = v else {
                    return Err(top.at.err(format!("bundles[{i}]"), "expected a table"));
                };
                let b = crate::bundle::bundle(bt, i, &items).map_err(|e| LoadError::Bundle {
                    bundle: e.bundle,
                    key: e.key,
                    message: e.message,
                })?;
                if items.iter().any(|x| x.code == b.code)
                    || data_items.iter().any(|x| x.code == b.code)
                    || bundles.iter().any(|x| x.code == b.code)
                {
                    return Err(LoadError::Bundle {
                        bundle: b.code.clone(),
                        key: "code".into(),
                        message: "duplicate code (an item or another bundle has it)".into(),
                    });
                }
                bundles.push(b);
            }
        }
        Some(other) => return Err(top.type_err("bundles", "an array of [[bundles]]", other)),
    }
    Ok(Catalog {
        bundles,
        federation,
        version,
        cities,
        organisations,
        calendar,
        divisions,
        items,
        data_items,
        digest: {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(text.as_bytes()))
        },
        source: "embedded".into(),
    })
}

fn organisations(top: &Keys<'_>) -> Result<BTreeMap<String, Organisation>, LoadError> {
    let mut out = BTreeMap::new();
    for (id, v) in top.table("organisations")? {
        let key = format!("organisations.{id}");
        if !id_ok(id) {
            return Err(top
                .at
                .err(key, "not an organisation id (lowercase, digits, '-')"));
        }
        let Value::Table(t) = v else {
            return Err(top.at.err(key, "expected { zh = …, en = … }"));
        };
        let k = Keys {
            t,
            at: At::Top,
            prefix: format!("{key}."),
        };
        k.only(&["zh", "en"])?;
        out.insert(
            id.clone(),
            Organisation {
                id: id.clone(),
                name_zh: k.string("zh")?,
                name_en: k.string("en")?,
            },
        );
    }
    Ok(out)
}

fn calendar(top: &Keys<'_>) -> Result<Calendar, LoadError> {
    let k = Keys {
        t: top.table("calendar")?,
        at: At::Top,
        prefix: "calendar.".into(),
    };
    k.only(&["holidays", "workdays"])?;
    let dates = |key: &str| -> Result<BTreeSet<time::Date>, LoadError> {
        k.strings(key)?
            .iter()
            .map(|d| parse_date(d).map_err(|m| k.at.err(k.name(key), format!("`{d}` {m}"))))
            .collect()
    };
    Ok(Calendar {
        holidays: dates("holidays")?,
        workdays: dates("workdays")?,
    })
}

fn item(
    t: &Table,
    label: &str,
    cities: &[String],
    orgs: &BTreeMap<String, Organisation>,
    divisions: &Arc<Divisions>,
) -> Result<Item, LoadError> {
    let k = Keys {
        t,
        at: At::Item(label),
        prefix: String::new(),
    };
    k.only(ITEM_KEYS)?;
    let code = k.string("code")?;
    tongban_proto::metadata::check_catalog_code(&code).map_err(|m| k.at.err("code", m))?;
    let providers = providers(&k, cities, orgs)?;
    let produces_s = k.string("produces")?;
    let produces = Produces::ALL
        .iter()
        .find(|(n, _)| *n == produces_s)
        .map(|(_, p)| *p)
        .ok_or_else(|| {
            k.at.err(
                "produces",
                format!(
                    "unknown kind `{produces_s}` (expected certificate, record-extract or transfer-confirmation)"
                ),
            )
        })?;
    let fields = match k.get("fields")? {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| field(v, i, label, divisions))
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(k.type_err("fields", "an array of field tables", other)),
    };
    for (i, f) in fields.iter().enumerate() {
        if fields[..i].iter().any(|g| g.name == f.name) {
            return Err(k.at.err(
                format!("fields[{i}].name"),
                format!("duplicate field `{}`", f.name),
            ));
        }
    }
    Ok(Item {
        name_zh: k.string("name_zh")?,
        name_en: k.string("name_en")?,
        category: k.string("category")?,
        personal_data: k.boolean("personal_data")?,
        time_limit_days: k.days("time_limit_days")?,
        valid_days: k.days("valid_days")?,
        materials: k.strings("materials")?,
        code,
        providers,
        produces,
        fields,
        divisions: divisions.clone(),
    })
}

fn data_item(
    t: &Table,
    label: &str,
    cities: &[String],
    orgs: &BTreeMap<String, Organisation>,
) -> Result<DataItem, LoadError> {
    let k = Keys {
        t,
        at: At::Item(label),
        prefix: String::new(),
    };
    k.only(DATA_ITEM_KEYS)?;
    let code = k.string("code")?;
    tongban_proto::metadata::check_catalog_code(&code).map_err(|m| k.at.err("code", m))?;
    let service = k.string("service")?;
    let valid_service = service.contains('.')
        && service
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    if !valid_service {
        return Err(k.at.err(
            "service",
            format!("`{service}` is not a full proto service name (package.Service)"),
        ));
    }
    Ok(DataItem {
        name_zh: k.string("name_zh")?,
        name_en: k.string("name_en")?,
        category: k.string("category")?,
        personal_data: k.boolean("personal_data")?,
        providers: providers(&k, cities, orgs)?,
        code,
        service,
    })
}

/// `providers = { city = org, … }`: known cities and organisations, at least one.
fn providers(
    k: &Keys<'_>,
    cities: &[String],
    orgs: &BTreeMap<String, Organisation>,
) -> Result<BTreeMap<String, String>, LoadError> {
    let mut providers = BTreeMap::new();
    for (city, v) in k.table("providers")? {
        let key = format!("providers.{city}");
        if !cities.contains(city) {
            return Err(k.at.err(
                key,
                format!("unknown city `{city}` (cities: {})", cities.join(", ")),
            ));
        }
        let Value::String(org) = v else {
            return Err(k.at.err(key, "expected an organisation id"));
        };
        if !orgs.contains_key(org) {
            return Err(k.at.err(
                key,
                format!("unknown organisation `{org}` (not in [organisations])"),
            ));
        }
        providers.insert(city.clone(), org.clone());
    }
    if providers.is_empty() {
        return Err(k.at.err("providers", "no city provides this item"));
    }
    Ok(providers)
}

fn field(v: &Value, i: usize, label: &str, divisions: &Divisions) -> Result<Field, LoadError> {
    let at = At::Item(label);
    let Value::Table(t) = v else {
        return Err(at.err(format!("fields[{i}]"), "expected a table"));
    };
    let k = Keys {
        t,
        at,
        prefix: format!("fields[{i}]."),
    };
    k.only(FIELD_KEYS)?;
    let name = k.string("name")?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(at.err(k.name("name"), format!("`{name}` is not snake_case ascii")));
    }
    let type_name = k.string("type")?;
    let kind = match type_name.as_str() {
        "text" => FieldType::Text {
            pattern: match k.opt_string("pattern")? {
                None => None,
                Some(p) => Some(Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    at.err(k.name("pattern"), format!("not a regular expression: {e}"))
                })?),
            },
            max_len: k
                .opt_int("max_len")?
                .map(|n| usize::try_from(n).map_err(|_| at.err(k.name("max_len"), "negative")))
                .transpose()?,
            multiline: k.opt_bool("multiline")?.unwrap_or(false),
        },
        "enum" => {
            let values = k.strings("values")?;
            if values.is_empty() {
                return Err(at.err(k.name("values"), "an enum needs at least one value"));
            }
            FieldType::Enum(values)
        }
        "date" => FieldType::Date,
        "resident-id" => FieldType::ResidentId,
        "credit-code" => FieldType::CreditCode,
        "division-code" => FieldType::DivisionCode,
        "phone" => FieldType::Phone,
        "integer" => FieldType::Integer {
            min: k.opt_int("min")?,
            max: k.opt_int("max")?,
        },
        other => {
            return Err(at.err(
                k.name("type"),
                format!(
                    "unknown field type `{other}` (expected one of: {})",
                    TYPE_NAMES.join(", ")
                ),
            ))
        }
    };
    let example = k.string("example")?;
    kind.check_in(&example, divisions)
        .map_err(|m| at.err(k.name("example"), format!("the example is invalid: {m}")))?;
    Ok(Field {
        name,
        kind,
        required: k.boolean("required")?,
        example,
    })
}

#[cfg(test)]
mod tests {
    use crate::{Catalog, LoadError};

    /// The embedded catalog with one edit, and the error that edit must produce.
    fn refused(from: &str, to: &str) -> LoadError {
        let text = crate::EMBEDDED.replacen(from, to, 1);
        assert_ne!(text, crate::EMBEDDED, "the edit `{from}` did not apply");
        Catalog::parse(&text).unwrap_err()
    }

    fn item_key(e: &LoadError) -> (String, String) {
        match e {
            LoadError::Item { item, key, .. } => (item.clone(), key.clone()),
            other => panic!("not an item error: {other}"),
        }
    }

    #[test]
    fn a_catalog_file_names_its_division_table() {
        let dir = tempfile::tempdir().unwrap();
        let table = crate::divisions::EMBEDDED.replace("# version = 202101", "# a copy");
        std::fs::write(dir.path().join("codes.csv"), &table).unwrap();
        let text = format!("divisions = \"codes.csv\"\n{}", crate::EMBEDDED);
        std::fs::write(dir.path().join("catalog.toml"), &text).unwrap();
        let c = Catalog::load(&dir.path().join("catalog.toml")).unwrap();
        assert_eq!(c.divisions.version, 202101);
        // A table without Jinan's 历下区 (370102): an example that uses it is refused, naming
        // the item and the key; a table that does not load is refused naming its line.
        let without: String = table
            .lines()
            .filter(|l| !l.starts_with("370102,"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(dir.path().join("codes.csv"), without).unwrap();
        let e = Catalog::load(&dir.path().join("catalog.toml")).unwrap_err();
        assert!(
            matches!(&e, LoadError::Item { key, .. } if key.ends_with(".example")),
            "{e}"
        );
        std::fs::write(dir.path().join("codes.csv"), "code,name\n").unwrap();
        let e = Catalog::load(&dir.path().join("catalog.toml")).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        // Only a catalog file may name one.
        let e = Catalog::parse(&text).unwrap_err();
        assert!(e.to_string().contains("divisions"), "{e}");
    }

    #[test]
    fn data_items_load_and_their_refusals_name_the_item_and_the_key() {
        let c = Catalog::embedded().unwrap();
        let mr = c.data_item("MR-01").unwrap();
        assert_eq!(mr.service, "tongban.medical.v1.ResultRegistry");
        assert_eq!(c.personal_data("MR-01"), Some(true));
        assert_eq!(c.personal_data("JQ-19"), Some(false));
        assert_eq!(c.personal_data("JQ-99"), None);
        assert_eq!(c.names("MR-02").unwrap().0, "检查检验结果发布");
        let e = refused("code = \"MR-02\"", "code = \"JQ-16\"");
        assert_eq!(item_key(&e), ("JQ-16".into(), "code".into()));
        let e = refused(
            "service = \"tongban.medical.v1.ResultRegistry\"",
            "service = \"ResultRegistry\"",
        );
        assert_eq!(item_key(&e), ("MR-01".into(), "service".into()));
        let e = refused(
            "providers = { jinan = \"wjw\", qingdao = \"wjw\" }\npersonal_data = true\n\n[[data_items]]",
            "providers = { jinan = \"wjw\", zibo = \"wjw\" }\npersonal_data = true\n\n[[data_items]]",
        );
        assert_eq!(item_key(&e), ("MR-01".into(), "providers.zibo".into()));
        let e = refused(
            "category = \"medical\"\nservice",
            "category = \"medical\"\nform = 1\nservice",
        );
        assert_eq!(item_key(&e).0, "MR-01");
    }

    #[test]
    fn loader_refusals_name_the_item_and_the_key() {
        let e = refused("code = \"JQ-02\"", "code = \"JQ-01\"");
        assert_eq!(item_key(&e), ("JQ-01".into(), "code".into()));
        assert!(e.to_string().contains("duplicate"), "{e}");

        let e = refused(
            "providers = { jinan = \"gjj\"",
            "providers = { jinan = \"fund\"",
        );
        assert_eq!(item_key(&e), ("JQ-07".into(), "providers.jinan".into()));
        assert!(e.to_string().contains("unknown organisation `fund`"), "{e}");

        let e = refused("type = \"phone\"", "type = \"telephone\"");
        assert_eq!(item_key(&e), ("JQ-01".into(), "fields[1].type".into()));
        assert!(
            e.to_string().contains("unknown field type `telephone`"),
            "{e}"
        );

        let e = refused("name_en = \"Pension contribution certificate\"\n", "");
        assert_eq!(item_key(&e), ("JQ-02".into(), "name_en".into()));
        assert!(e.to_string().contains("missing"), "{e}");

        let e = refused("time_limit_days = 15\nvalid_days = 365\nmaterials = [\"id-card\", \"contribution-record\"]", "valid_days = 365\nmaterials = [\"id-card\", \"contribution-record\"]");
        assert_eq!(item_key(&e), ("JQ-03".into(), "time_limit_days".into()));

        let e = refused(
            "example = \"91370200163562681G\"",
            "example = \"91370200163562681H\"",
        );
        assert_eq!(item_key(&e), ("JQ-03".into(), "fields[2].example".into()));

        let e = refused("pattern = \"[0-9]{12,19}\"", "pattern = \"[0-9\"");
        assert_eq!(item_key(&e), ("JQ-04".into(), "fields[2].pattern".into()));

        let e = refused("produces = \"record-extract\"", "produces = \"pdf\"");
        assert_eq!(item_key(&e), ("JQ-02".into(), "produces".into()));

        let e = refused(
            "providers = { jinan = \"hrss\", qingdao = \"hrss\" }",
            "providers = { jinan = \"hrss\", yantai = \"hrss\" }",
        );
        assert_eq!(item_key(&e), ("JQ-01".into(), "providers.yantai".into()));

        let e = refused(
            "personal_data = true",
            "personal_data = true\ncolour = \"red\"",
        );
        assert_eq!(item_key(&e), ("JQ-01".into(), "colour".into()));

        let e = refused(
            "holidays = [\n  \"2026-01-01\"",
            "holidays = [\n  \"2026-13-01\"",
        );
        assert!(
            matches!(&e, LoadError::Top { key, .. } if key == "calendar.holidays"),
            "{e}"
        );

        assert!(matches!(
            Catalog::parse("federation = "),
            Err(LoadError::Syntax(_))
        ));
    }
}
