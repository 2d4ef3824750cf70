//! Value types, checked against the compiled-in default, because `config` converts them.
//!
//! The `config` crate converts liberally on deserialisation: `port = 1883.5` becomes 1884,
//! `qos = 0.4` becomes 0 (at-most-once delivery nobody asked for), `persistent_session = "yes"`
//! becomes `true`, `id = 5` becomes "5". So the user's TOML is walked against the default's
//! TOML tree here, and a value of another kind than the default's is an error naming the key
//! and the expected type. The default is the schema: every key it has is typed by its value
//! there. Keys it does not have are left to the unknown-key check (serde's
//! `deny_unknown_fields`) and to the fields of `kind = "projection"` encoders, which the
//! default does not list.
//!
//! Environment overrides are text by nature: each is parsed here as its key's type (an integer
//! key takes only an integer, a string key takes the text as is, so `007` stays "007") and
//! handed to `config` already typed, instead of letting `config` guess a type from the text.

use std::collections::BTreeMap;

use toml::de::{DeTable, DeValue};

use super::{invalid, ConfigError, ENV_PREFIX};

/// A parsed TOML value; numbers keep the text they were written as, for the messages.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    String(String),
    Integer(String),
    Float(String),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Value>),
    Table(Table),
}

pub(super) type Table = BTreeMap<String, Value>;

/// Parses TOML text into a [`Table`]. `toml::de::DeTable` is the tree `config` parses with:
/// `toml`'s own `Table` would need its `serde` feature and so a second build of it.
pub(super) fn parse(text: &str) -> Result<Table, ConfigError> {
    let doc = DeTable::parse(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    Ok(table(doc.into_inner()))
}

fn table(t: DeTable<'_>) -> Table {
    t.into_iter()
        .map(|(k, v)| (k.into_inner().into_owned(), value(v.into_inner())))
        .collect()
}

fn value(v: DeValue<'_>) -> Value {
    match v {
        DeValue::String(s) => Value::String(s.into_owned()),
        // Display keeps the radix prefix (`0x1F`), which `as_str` drops.
        DeValue::Integer(i) => Value::Integer(i.to_string()),
        DeValue::Float(f) => Value::Float(f.as_str().to_string()),
        DeValue::Boolean(b) => Value::Boolean(b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(a) => Value::Array(a.into_iter().map(|v| value(v.into_inner())).collect()),
        DeValue::Table(t) => Value::Table(table(t)),
    }
}

/// The compiled-in default as a tree: the type of every known key.
pub(super) fn default_tree() -> Table {
    parse(super::DEFAULT_CONFIG).expect("the compiled-in default is valid TOML (a test loads it)")
}

/// Checks every key of `user` that the default also has against the default's type.
pub(super) fn check_file(user: &Table, default: &Table) -> Result<(), ConfigError> {
    check_table("", user, default)
}

fn check_table(prefix: &str, user: &Table, default: &Table) -> Result<(), ConfigError> {
    for (k, v) in user {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let Some(d) = default.get(k) {
            check_value(&key, v, d)?;
        }
    }
    Ok(())
}

fn check_value(key: &str, user: &Value, default: &Value) -> Result<(), ConfigError> {
    let fits = match (default, user) {
        (Value::Table(d), Value::Table(u)) => return check_table(key, u, d),
        (Value::Array(d), Value::Array(u)) => {
            // Elements are typed by the default's first one (e.g. `subscribe = ["sensors/#"]`).
            if let Some(first) = d.first() {
                for (i, v) in u.iter().enumerate() {
                    check_value(&format!("{key}[{i}]"), v, first)?;
                }
            }
            return Ok(());
        }
        // An integer is a number: `gap_factor = 8` means 8.0.
        (Value::Float(_), Value::Float(_) | Value::Integer(_)) => true,
        (d, u) => std::mem::discriminant(d) == std::mem::discriminant(u),
    };
    if fits {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("expected {}, got {}", expected(default), shown(user)),
        ))
    }
}

/// What a key of the default's type takes, for the message.
fn expected(default: &Value) -> &'static str {
    match default {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The user's value as they wrote it, so they can find it in their file.
fn shown(v: &Value) -> String {
    match v {
        // Named a string, so `"0.5"` reads as what it is and the fix (drop the quotes) is plain.
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(text) | Value::Float(text) | Value::Datetime(text) => text.clone(),
        Value::Boolean(b) => b.to_string(),
        Value::Array(_) => "an array".into(),
        Value::Table(_) => "a table".into(),
    }
}

/// One `SPARSEWATCH__SECTION__KEY` override: the dotted key it sets and its value, parsed as
/// that key's type in the default. Keys the default does not have are passed on with the
/// type their text looks like, as before, for the unknown-key check (and the projection
/// encoder's fields) to judge.
pub(super) fn env_override(
    var: &str,
    raw: &str,
    default: &Table,
) -> Result<(String, config::Value), ConfigError> {
    let rest = var
        .strip_prefix(ENV_PREFIX)
        .and_then(|r| r.strip_prefix("__"))
        .unwrap_or(var);
    let key = rest.to_lowercase().replace("__", ".");
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(invalid(
            var,
            format!(
                "is not a configuration key: overrides are named {ENV_PREFIX}__<SECTION>__<KEY>"
            ),
        ));
    }
    let Some(d) = lookup(default, &key) else {
        return Ok((key, guessed(raw)));
    };
    let bad = |expected: &str| {
        invalid(
            &key,
            format!("expected {expected}, got {raw:?} (from {var})"),
        )
    };
    // Digits may be grouped with `_` as in a TOML file (`1_000`), so a value moved from the
    // file to the environment keeps working.
    let digits = raw.replace('_', "");
    let value = match d {
        Value::String(_) => config::Value::from(raw.to_string()),
        Value::Integer(_) => {
            if let Ok(i) = digits.parse::<i64>() {
                config::Value::from(i)
            } else if let Ok(u) = digits.parse::<u64>() {
                config::Value::from(u)
            } else {
                return Err(bad("an integer"));
            }
        }
        Value::Float(_) => config::Value::from(digits.parse::<f64>().map_err(|_| bad("a number"))?),
        Value::Boolean(_) => config::Value::from(match raw.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => return Err(bad("true or false")),
        }),
        // Lists take commas: `SPARSEWATCH__MQTT__SUBSCRIBE="plant/#,lab/#"`. The only list
        // key (`mqtt.subscribe`) holds strings.
        Value::Array(_) => {
            config::Value::from(raw.split(',').map(str::to_string).collect::<Vec<_>>())
        }
        Value::Table(t) => {
            let example = t.keys().next().map_or(String::new(), |k| {
                format!(", e.g. {var}__{}", k.to_uppercase())
            });
            return Err(invalid(
                &key,
                format!("is a table: set its keys one by one{example} (from {var})"),
            ));
        }
        Value::Datetime(_) => config::Value::from(raw.to_string()),
    };
    Ok((key, value))
}

/// The default's value at a dotted key, if the default has that key.
pub(super) fn lookup<'a>(default: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut v = default.get(parts.next()?)?;
    for p in parts {
        let Value::Table(t) = v else { return None };
        v = t.get(p)?;
    }
    Some(v)
}

/// What `config`'s `try_parsing` made of an override's text: a bool, an integer, a float,
/// or the text.
fn guessed(raw: &str) -> config::Value {
    if let Ok(b) = raw.to_lowercase().parse::<bool>() {
        config::Value::from(b)
    } else if let Ok(i) = raw.parse::<i64>() {
        config::Value::from(i)
    } else if let Ok(f) = raw.parse::<f64>() {
        config::Value::from(f)
    } else {
        config::Value::from(raw.to_string())
    }
}
