//! Input checks shared by the API (before proposing) and `apply` (which must never trust the
//! log's producer to have checked).
use std::collections::BTreeMap;

pub const MAX_NAME_LEN: usize = 255;
pub const MAX_DESCRIPTION_LEN: usize = 4096;
pub const MAX_PROPERTIES: usize = 128;
pub const MAX_PROPERTY_KEY_LEN: usize = 255;
pub const MAX_PROPERTY_VALUE_LEN: usize = 4096;

/// A resource name: 1–255 characters, no control characters, not blank at the ends, and not
/// shaped like a UUID (ids are UUIDs; a name must never shadow another resource's id).
pub fn name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!(
            "{kind} name is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{kind} name must not contain control characters"));
    }
    if name.trim() != name {
        return Err(format!(
            "{kind} name must not start or end with white space"
        ));
    }
    if looks_like_uuid(name) {
        return Err(format!(
            "{kind} name must not look like a UUID (ids are UUIDs)"
        ));
    }
    Ok(())
}

pub fn description(kind: &str, text: &str) -> Result<(), String> {
    if text.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(format!(
            "{kind} description is longer than {MAX_DESCRIPTION_LEN} characters"
        ));
    }
    Ok(())
}

/// Key/value properties after a change: bounded count and sizes, keys without control chars.
pub fn properties(kind: &str, props: &BTreeMap<String, String>) -> Result<(), String> {
    if props.len() > MAX_PROPERTIES {
        return Err(format!("{kind} has more than {MAX_PROPERTIES} properties"));
    }
    for (k, v) in props {
        if k.is_empty() || k.len() > MAX_PROPERTY_KEY_LEN || k.chars().any(char::is_control) {
            return Err(format!(
                "{kind} property key {k:?} must be 1–{MAX_PROPERTY_KEY_LEN} characters without \
                 control characters"
            ));
        }
        if v.len() > MAX_PROPERTY_VALUE_LEN {
            return Err(format!(
                "{kind} property {k:?} has a value longer than {MAX_PROPERTY_VALUE_LEN} bytes"
            ));
        }
    }
    Ok(())
}

pub fn looks_like_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

pub const MAX_VCPUS: u32 = 1024;
pub const MAX_RAM_MIB: u64 = 16 << 20;
pub const MAX_DISK_GIB: u64 = 1 << 20;

pub fn flavor_sizes(
    vcpus: u32,
    ram_mib: u64,
    disk_gib: u64,
    ephemeral_gib: u64,
    swap_mib: u64,
) -> Result<(), String> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(format!("flavor vcpus must be between 1 and {MAX_VCPUS}"));
    }
    if !(16..=MAX_RAM_MIB).contains(&ram_mib) {
        return Err(format!(
            "flavor ram must be between 16 and {MAX_RAM_MIB} MiB"
        ));
    }
    if disk_gib > MAX_DISK_GIB || ephemeral_gib > MAX_DISK_GIB {
        return Err(format!(
            "flavor disk and ephemeral sizes must be at most {MAX_DISK_GIB} GiB"
        ));
    }
    if swap_mib > MAX_RAM_MIB {
        return Err(format!("flavor swap must be at most {MAX_RAM_MIB} MiB"));
    }
    Ok(())
}
