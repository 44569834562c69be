//! The schema-evolution rule, checked in the tests for every pair of consecutive published
//! schema versions: a new version may only add fields, each with a default; existing fields
//! keep their name and type. Events written by older proxies then keep decoding (the golden
//! fixtures prove it) and newer events decode with older readers.

use apache_avro::schema::RecordSchema;
use apache_avro::Schema;

/// Why `new` is not a valid evolution of `old`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvolutionError {
    /// Not a record schema.
    #[error("schema is not a record")]
    NotRecord,
    /// A field of the old version is gone.
    #[error("field `{0}` was removed (fields may only be added)")]
    Removed(String),
    /// A field changed type.
    #[error("field `{0}` changed type (types of existing fields are fixed)")]
    TypeChanged(String),
    /// A new field has no default.
    #[error("new field `{0}` has no default (added fields need one)")]
    NoDefault(String),
}

fn record(schema: &Schema) -> Result<&RecordSchema, EvolutionError> {
    match schema {
        Schema::Record(r) => Ok(r),
        _ => Err(EvolutionError::NotRecord),
    }
}

/// Check that `new` only adds defaulted fields to `old`.
pub fn check(old: &Schema, new: &Schema) -> Result<(), EvolutionError> {
    let (old, new) = (record(old)?, record(new)?);
    for f in &old.fields {
        let Some(n) = new.fields.iter().find(|n| n.name == f.name) else {
            return Err(EvolutionError::Removed(f.name.clone()));
        };
        if n.schema != f.schema {
            return Err(EvolutionError::TypeChanged(f.name.clone()));
        }
    }
    for n in &new.fields {
        if !old.fields.iter().any(|f| f.name == n.name) && n.default.is_none() {
            return Err(EvolutionError::NoDefault(n.name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::KNOWN_SCHEMAS;

    fn parse(text: &str) -> Schema {
        Schema::parse_str(text).unwrap()
    }

    #[test]
    fn every_published_version_follows_the_rule() {
        let schemas: Vec<Schema> = KNOWN_SCHEMAS.iter().map(|t| parse(t)).collect();
        for pair in schemas.windows(2) {
            check(&pair[0], &pair[1]).unwrap();
        }
        // In-place edits of a published schema are caught by its golden fixture
        // (`schemas/tests`), not here: this checks each step between published versions,
        // and that the next version may add a field with a default.
        let current = KNOWN_SCHEMAS.last().unwrap();
        let mut next: serde_json::Value = serde_json::from_str(current).unwrap();
        next["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "added_later", "type": "long", "default": 0}));
        check(&parse(current), &parse(&next.to_string())).unwrap();
        next["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "no_default", "type": "long"}));
        assert!(check(&parse(current), &parse(&next.to_string())).is_err());
    }

    #[test]
    fn violations_are_named() {
        let base = r#"{"type":"record","name":"E","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}"#;
        let removed = r#"{"type":"record","name":"E","fields":[{"name":"a","type":"long"}]}"#;
        let retyped = r#"{"type":"record","name":"E","fields":[{"name":"a","type":"int"},{"name":"b","type":"string"}]}"#;
        let no_default = r#"{"type":"record","name":"E","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"},{"name":"c","type":"long"}]}"#;
        let ok = r#"{"type":"record","name":"E","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"},{"name":"c","type":"long","default":0}]}"#;
        let base = parse(base);
        assert_eq!(
            check(&base, &parse(removed)),
            Err(EvolutionError::Removed("b".into()))
        );
        assert_eq!(
            check(&base, &parse(retyped)),
            Err(EvolutionError::TypeChanged("a".into()))
        );
        assert_eq!(
            check(&base, &parse(no_default)),
            Err(EvolutionError::NoDefault("c".into()))
        );
        assert_eq!(check(&base, &parse(ok)), Ok(()));
    }
}
