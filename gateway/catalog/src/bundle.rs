//! "One thing" bundles (高效办成一件事) as catalog data: several items, in order, with one
//! form whose fields fill the items' fields (`[[bundles]]`). What a bundle service needs to
//! submit the items one after another; checked when the catalog loads, so that a bundle
//! never leaves an item's required field unfilled.
//!
//! ```toml
//! [[bundles]]
//! code = "JQB-01"
//! name_zh = "跨市迁居一件事"
//! name_en = "Moving to the other city"
//! # In order; each item waits for the items it names in `after` (listed before it).
//! # `optional = true`: the applicant may leave it out.
//! items = [{ code = "JQ-13" }, { code = "JQ-03", after = ["JQ-13"] }]
//! [bundles.form]          # the bundle's field = the item fields it fills
//! to_division = ["JQ-13.to_division", "JQ-03.to_division"]
//! [bundles.from_results]  # an item field filled from an earlier item's result
//! "JQ-22.credit_code" = "JQ-19"
//! ```

use std::collections::{BTreeMap, BTreeSet};

use toml::{Table, Value};

use crate::Item;

/// Why a bundle is refused: the bundle, the key, what is wrong (the loader reports it as
/// `LoadError::Bundle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleError {
    pub bundle: String,
    pub key: String,
    pub message: String,
}

/// One item of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleItem {
    pub code: String,
    /// The items it waits for (listed before it in the bundle).
    pub after: Vec<String>,
    /// The applicant may leave it out.
    pub optional: bool,
}

/// An item field: (item code, field name).
pub type Target = (String, String);

/// A bundle of items with one form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub code: String,
    pub name_zh: String,
    pub name_en: String,
    pub items: Vec<BundleItem>,
    /// The bundle's form: each field and the item fields it fills.
    pub form: BTreeMap<String, Vec<Target>>,
    /// Item fields filled from an earlier item's result (the item whose result it is).
    pub from_results: BTreeMap<Target, String>,
}

const KEYS: &[&str] = &[
    "code",
    "name_zh",
    "name_en",
    "items",
    "form",
    "from_results",
];

fn err(bundle: &str, key: impl Into<String>, message: impl Into<String>) -> BundleError {
    BundleError {
        bundle: bundle.to_string(),
        key: key.into(),
        message: message.into(),
    }
}

fn string(t: &Table, bundle: &str, key: &str) -> Result<String, BundleError> {
    match t.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(_) => Err(err(bundle, key, "a non-empty string is required")),
        None => Err(err(bundle, key, "missing")),
    }
}

/// `CODE.field`, naming an item of the bundle and one of its fields.
fn target(
    s: &str,
    bundle: &str,
    key: &str,
    members: &BTreeMap<&str, &Item>,
) -> Result<Target, BundleError> {
    let (code, field) = s
        .split_once('.')
        .ok_or_else(|| err(bundle, key, format!("`{s}` is not ITEM.field")))?;
    let item = members.get(code).ok_or_else(|| {
        err(
            bundle,
            key,
            format!("`{s}`: item `{code}` is not one of the bundle's items"),
        )
    })?;
    if !item.fields.iter().any(|f| f.name == field) {
        return Err(err(
            bundle,
            key,
            format!("`{s}`: item `{code}` has no field `{field}`"),
        ));
    }
    Ok((code.to_string(), field.to_string()))
}

/// Reads and checks one `[[bundles]]` table against the catalog's `items`.
pub(crate) fn bundle(t: &Table, index: usize, items: &[Item]) -> Result<Bundle, BundleError> {
    let label = match t.get("code") {
        Some(Value::String(c)) => c.clone(),
        _ => format!("bundles[{index}]"),
    };
    let b = label.as_str();
    if let Some(k) = t.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(err(
            b,
            k.as_str(),
            format!("unknown key (allowed: {})", KEYS.join(", ")),
        ));
    }
    let code = string(t, b, "code")?;
    tongban_proto::metadata::check_catalog_code(&code).map_err(|m| err(b, "code", m))?;
    let name_zh = string(t, b, "name_zh")?;
    let name_en = string(t, b, "name_en")?;

    let Some(Value::Array(raw)) = t.get("items") else {
        return Err(err(
            b,
            "items",
            "an array of { code, after, optional } is required",
        ));
    };
    let mut members: BTreeMap<&str, &Item> = BTreeMap::new();
    let mut list = Vec::new();
    for (i, v) in raw.iter().enumerate() {
        let key = format!("items[{i}]");
        let Value::Table(it) = v else {
            return Err(err(b, key, "expected { code, after, optional }"));
        };
        if let Some(k) = it
            .keys()
            .find(|k| !["code", "after", "optional"].contains(&k.as_str()))
        {
            return Err(err(
                b,
                format!("{key}.{k}"),
                "unknown key (allowed: code, after, optional)",
            ));
        }
        let c = match it.get("code") {
            Some(Value::String(c)) => c.as_str(),
            _ => return Err(err(b, format!("{key}.code"), "an item code is required")),
        };
        let item = items.iter().find(|x| x.code == c).ok_or_else(|| {
            err(
                b,
                format!("{key}.code"),
                format!("unknown item `{c}` (not in [[items]])"),
            )
        })?;
        if members.contains_key(c) {
            return Err(err(
                b,
                format!("{key}.code"),
                format!("item `{c}` is listed twice"),
            ));
        }
        let after: Vec<String> = match it.get("after") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    err(
                        b,
                        format!("{key}.after"),
                        "a list of item codes is required",
                    )
                })?,
            Some(_) => {
                return Err(err(
                    b,
                    format!("{key}.after"),
                    "a list of item codes is required",
                ))
            }
        };
        for a in &after {
            // Only items listed before it: so the order is a valid order, and no cycle.
            if !members.contains_key(a.as_str()) {
                let why = if raw
                    .iter()
                    .any(|v| v.get("code").and_then(Value::as_str) == Some(a))
                {
                    format!("`{a}` is listed after `{c}`: an item waits only for items listed before it (this would be a cycle or a wrong order)")
                } else {
                    format!("`{a}` is not one of the bundle's items")
                };
                return Err(err(b, format!("{key}.after"), why));
            }
        }
        let optional = match it.get("optional") {
            None => false,
            Some(Value::Boolean(o)) => *o,
            Some(_) => return Err(err(b, format!("{key}.optional"), "true or false")),
        };
        members.insert(item.code.as_str(), item);
        list.push(BundleItem {
            code: c.to_string(),
            after,
            optional,
        });
    }
    if list.is_empty() {
        return Err(err(b, "items", "a bundle needs at least one item"));
    }

    let mut filled: BTreeMap<Target, String> = BTreeMap::new();
    let mut form = BTreeMap::new();
    let Some(Value::Table(raw_form)) = t.get("form") else {
        return Err(err(
            b,
            "form",
            "a table of form field = [\"ITEM.field\", …] is required",
        ));
    };
    for (name, v) in raw_form {
        let key = format!("form.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        {
            return Err(err(
                b,
                key,
                "a form field name is lowercase letters, digits and '_'",
            ));
        }
        let Some(targets) = v.as_array() else {
            return Err(err(b, key, "a list of \"ITEM.field\" is required"));
        };
        if targets.is_empty() {
            return Err(err(
                b,
                key,
                "the field maps nowhere: name the item fields it fills",
            ));
        }
        let mut out = Vec::new();
        for s in targets {
            let s = s
                .as_str()
                .ok_or_else(|| err(b, key.clone(), "a list of \"ITEM.field\" is required"))?;
            let tg = target(s, b, &key, &members)?;
            if let Some(other) = filled.insert(tg.clone(), key.clone()) {
                return Err(err(b, key, format!("`{s}` is filled by `{other}` already")));
            }
            out.push(tg);
        }
        form.insert(name.clone(), out);
    }

    let mut from_results = BTreeMap::new();
    match t.get("from_results") {
        None => {}
        Some(Value::Table(r)) => {
            for (s, v) in r {
                let key = format!("from_results.\"{s}\"");
                let tg = target(s, b, &key, &members)?;
                let Some(src) = v.as_str() else {
                    return Err(err(b, key, "the item whose result fills it is required"));
                };
                let waits = list
                    .iter()
                    .find(|i| i.code == tg.0)
                    .is_some_and(|i| i.after.iter().any(|a| a == src));
                if !waits {
                    return Err(err(
                        b,
                        key,
                        format!(
                            "`{}` must wait for `{src}` (name it in `after`) to take its result",
                            tg.0
                        ),
                    ));
                }
                if let Some(other) = filled.insert(tg.clone(), key.clone()) {
                    return Err(err(b, key, format!("`{s}` is filled by `{other}` already")));
                }
                from_results.insert(tg, src.to_string());
            }
        }
        Some(_) => {
            return Err(err(
                b,
                "from_results",
                "a table of \"ITEM.field\" = \"ITEM\" is required",
            ))
        }
    }

    // Every required field of every item is filled, from the form or a result.
    for item in &list {
        let it = members[item.code.as_str()];
        let missing: BTreeSet<&str> = it
            .fields
            .iter()
            .filter(|f| f.required && !filled.contains_key(&(item.code.clone(), f.name.clone())))
            .map(|f| f.name.as_str())
            .collect();
        if let Some(f) = missing.first() {
            return Err(err(
                b,
                "form",
                format!(
                    "item `{}`'s required field `{f}` is filled by no form field or result",
                    item.code
                ),
            ));
        }
    }
    Ok(Bundle {
        code,
        name_zh,
        name_en,
        items: list,
        form,
        from_results,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::{Catalog, LoadError, EMBEDDED};

    #[test]
    fn the_three_bundles_load_in_order_with_their_forms() {
        let c = Catalog::embedded().unwrap();
        let codes: Vec<&str> = c.bundles.iter().map(|b| b.code.as_str()).collect();
        assert_eq!(codes, ["JQB-01", "JQB-02", "JQB-03"]);
        let moving = c.bundle("JQB-01").unwrap();
        let items: Vec<&str> = moving.items.iter().map(|i| i.code.as_str()).collect();
        assert_eq!(items, ["JQ-13", "JQ-03", "JQ-08", "JQ-11"]);
        assert_eq!(moving.form["to_division"].len(), 4);
        let business = c.bundle("JQB-02").unwrap();
        assert!(business.items[1].optional);
        assert_eq!(
            business.from_results[&("JQ-22".to_string(), "credit_code".to_string())],
            "JQ-19"
        );
    }

    /// The embedded catalog with `from` replaced by `to` in its bundles.
    fn edited(from: &str, to: &str) -> Result<Catalog, LoadError> {
        let at = EMBEDDED.find("[[bundles]]").unwrap();
        let (head, tail) = EMBEDDED.split_at(at);
        assert!(tail.contains(from), "{from}");
        Catalog::parse(&format!("{head}{}", tail.replacen(from, to, 1)))
    }

    fn refused(from: &str, to: &str) -> (String, String) {
        match edited(from, to).unwrap_err() {
            LoadError::Bundle { bundle, key, .. } => (bundle, key),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn bad_bundles_are_refused_naming_the_bundle_and_the_key() {
        // An unknown item.
        assert_eq!(
            refused("{ code = \"JQ-11\", after", "{ code = \"JQ-99\", after"),
            ("JQB-01".into(), "items[3].code".into())
        );
        // A wrong order: an item waiting for one listed after it (a cycle otherwise).
        assert_eq!(
            refused("{ code = \"JQ-13\" },\n  { code = \"JQ-03\", after = [\"JQ-13\"] }", "{ code = \"JQ-13\", after = [\"JQ-03\"] },\n  { code = \"JQ-03\", after = [\"JQ-13\"] }"),
            ("JQB-01".into(), "items[0].after".into())
        );
        // A form field that maps nowhere, and one naming a field the item does not have.
        assert_eq!(
            refused("relationship = [\"JQ-13.relationship\"]\ndestination_address = [\"JQ-13.destination_address\"]\nprovident", "relationship = [\"JQ-13.relationship\"]\nnothing = []\ndestination_address = [\"JQ-13.destination_address\"]\nprovident"),
            ("JQB-01".into(), "form.nothing".into())
        );
        assert_eq!(
            refused("[\"JQ-08.account_number\"]", "[\"JQ-08.account_no\"]"),
            ("JQB-01".into(), "form.provident_fund_account".into())
        );
        // A required field of an item left unfilled.
        let e = edited("provident_fund_account = [\"JQ-08.account_number\"]\n", "").unwrap_err();
        assert!(e.to_string().contains("`account_number`"), "{e}");
        assert!(e.to_string().contains("JQB-01"), "{e}");
        // A result taken from an item the target does not wait for.
        assert_eq!(
            refused(
                "{ code = \"JQ-22\", after = [\"JQ-19\"], optional = true }",
                "{ code = \"JQ-22\", optional = true }"
            ),
            ("JQB-02".into(), "from_results.\"JQ-22.credit_code\"".into())
        );
    }
}
