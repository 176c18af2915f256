//! Merging a configuration file over the defaults, and `REGISTRY_*` environment overrides.

use serde_json::Value;

use super::sections::{EstuaryConfig, FilesystemConfig, IpfsConfig};

/// Overlay `from` onto `into`: objects merge key by key, anything else replaces.
pub(super) fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) if !v.is_null() => merge(slot, v),
                    Some(_) => {}
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Env names spell keys uppercase with `_` for both nesting and `-`.
fn env_name(key: &str) -> String {
    key.to_ascii_uppercase().replace('-', "_")
}

/// Walk `REGISTRY_A_B_C` down the tree, matching the longest key at each level so that keys
/// containing `-` (`SHUTTLE_URL`) work. Returns `None` when no key matches.
pub(super) fn apply_env(tree: &mut Value, rest: &str, raw: &str) -> Option<()> {
    let Value::Object(map) = tree else { return None };
    // A section absent from the defaults (an optional driver) becomes an empty object so that
    // `REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY` works without the file naming the driver.
    let keys: Vec<String> = map.keys().cloned().collect();
    let mut matches: Vec<&String> = keys
        .iter()
        .filter(|k| {
            let name = env_name(k);
            rest == name || rest.starts_with(&format!("{name}_"))
        })
        .collect();
    matches.sort_by_key(|k| std::cmp::Reverse(k.len()));
    let key = (*matches.first()?).clone();
    let name = env_name(&key);
    let slot = map.get_mut(&key)?;
    if rest == name {
        *slot = env_value(raw, slot.is_array());
        return Some(());
    }
    if slot.is_null() {
        *slot = optional_section(&key)?;
    }
    apply_env(slot, &rest[name.len() + 1..], raw)
}

/// The full key set of an optional section, so its keys can be matched.
fn optional_section(key: &str) -> Option<Value> {
    match key {
        "filesystem" => serde_json::to_value(FilesystemConfig::default()).ok(),
        "estuary" => serde_json::to_value(EstuaryConfig::default()).ok(),
        "ipfs" => serde_json::to_value(IpfsConfig::default()).ok(),
        "htpasswd" => serde_json::to_value(ipcr_auth::HtpasswdConfig::default()).ok(),
        "token" => serde_json::to_value(ipcr_auth::TokenConfig::default()).ok(),
        "access" => serde_json::to_value(ipcr_auth::AccessConfig::default()).ok(),
        "secret" | "id" => Some(Value::Null),
        _ => None,
    }
}

/// An environment value is read as YAML, so `true` and `3` keep their types and a list key
/// takes a flow sequence (`[/a.pem, /b.pem]`) or a single value (`/a.pem`).
fn env_value(raw: &str, list: bool) -> Value {
    match serde_saphyr::from_str::<Value>(raw) {
        Ok(v @ (Value::Bool(_) | Value::Number(_))) => v,
        Ok(v @ Value::Array(_)) if list => v,
        _ if list => Value::Array(vec![Value::String(raw.to_string())]),
        _ => Value::String(raw.to_string()),
    }
}
