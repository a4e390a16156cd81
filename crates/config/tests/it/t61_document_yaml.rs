//! Documents as YAML: the same model as JSON mapping for mapping, JSON → YAML → JSON gives the
//! same document (also for strings YAML would otherwise read as numbers, booleans or null),
//! and errors name the line and column.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tandem_config::document::{export, DocObject, DocRef, DocValue, Document, TextFormat, DOCUMENT_FORMAT};
use tandem_config::{ConfigError, ObjectType, State};

use crate::t60_document::rich;

/// Strings a YAML reader would take for something else, or that need quoting.
const AWKWARD: &[&str] = &[
    "",
    "123",
    "-7",
    "0x1F",
    "1e3",
    "0o17",
    ".5",
    "true",
    "false",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "null",
    "~",
    "Null",
    "NULL",
    ".inf",
    "-.inf",
    ".nan",
    "- item",
    "key: value",
    "a:b",
    "#comment",
    " padded ",
    "tab\there",
    "multi\nline\n",
    "'single'",
    "\"double\"",
    "@at",
    "`tick",
    "*alias",
    "&anchor",
    "!tag",
    "%directive",
    "|",
    ">",
    "[1, 2]",
    "{a: 1}",
    "é ✓ 漢字",
    "---",
    "...",
    "?",
    "2026-11-26",
    "12:30:00",
    "0",
    "00123",
    "+1",
];

fn doc_with(name: &str, values: &[&str]) -> Document {
    let options: BTreeMap<String, BTreeMap<String, String>> = [(
        "section".to_owned(),
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("k{i}"), (*v).to_owned()))
            .collect(),
    )]
    .into();
    Document {
        format: DOCUMENT_FORMAT,
        objects: vec![DocObject {
            object_type: ObjectType::Dn,
            name: name.to_owned(),
            tenant: Some("Environment".to_owned()),
            folder: None,
            state: State::Disabled,
            fields: [
                (
                    "number".to_owned(),
                    DocValue::Str(values.first().copied().unwrap_or("").to_owned()),
                ),
                (
                    "switch".to_owned(),
                    DocValue::Ref(DocRef {
                        object_type: ObjectType::Switch,
                        tenant: Some("Environment".to_owned()),
                        name: values.last().copied().unwrap_or("").to_owned(),
                    }),
                ),
            ]
            .into(),
            options: options.clone(),
            annex: options,
        }],
    }
}

#[test]
fn json_to_yaml_to_json_gives_the_same_document() {
    let document = export(&rich(), None).unwrap();
    let json = document.to_json();
    let yaml = Document::from_json(&json).unwrap().to_yaml();
    let back = Document::from_yaml(&yaml).unwrap();
    assert_eq!(back, document);
    assert_eq!(back.to_json(), json, "the JSON text itself is the same");
    assert_eq!(
        Document::from_text(&yaml, TextFormat::Yaml)
            .unwrap()
            .to_text(TextFormat::Json),
        json
    );
}

#[test]
fn yaml_has_the_json_shape_without_tags() {
    let yaml = export(&rich(), None).unwrap().to_yaml();
    // A field value is a one-key mapping, as in JSON, and no YAML tag appears.
    assert!(
        yaml.contains("ref:") && yaml.contains("ref_list:") && yaml.contains("grants:"),
        "{yaml}"
    );
    assert!(!yaml.contains(" !"), "{yaml}");
    assert!(yaml.starts_with("format: 1\n"), "{yaml}");
    // The same text as JSON reads as the same document: YAML accepts JSON's shape.
    let written = "format: 1\nobjects:\n- type: switch\n  name: sw\n  tenant: Environment\n  fields:\n    switch_type:\n      str: '42'\n";
    let document = Document::from_yaml(written).unwrap();
    assert_eq!(
        document.objects[0].fields.get("switch_type").cloned().unwrap(),
        DocValue::Str("42".into())
    );
    assert_eq!(document.objects[0].state, State::Enabled, "defaults apply as in JSON");
}

#[test]
fn awkward_strings_and_extreme_integers_survive() {
    let mut document = doc_with("1002", AWKWARD);
    document.objects[0].fields.insert("min".into(), DocValue::Int(i64::MIN));
    document.objects[0].fields.insert("max".into(), DocValue::Int(i64::MAX));
    document.objects[0].fields.insert("flag".into(), DocValue::Bool(false));
    let yaml = document.to_yaml();
    assert_eq!(Document::from_yaml(&yaml).unwrap(), document, "{yaml}");
    for name in AWKWARD.iter().filter(|n| !n.is_empty()) {
        let document = doc_with(name, &[name]);
        assert_eq!(Document::from_yaml(&document.to_yaml()).unwrap(), document, "{name:?}");
    }
}

#[test]
fn yaml_errors_name_line_and_column() {
    let bad_syntax = "format: 1\nobjects:\n- type: dn\n  name: x\n fields: {}\n";
    let e = Document::from_yaml(bad_syntax).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ConfigError::InvalidDocument { .. }), "{e:?}");
    assert!(text.contains("line 5, column"), "{text}");

    let wrong_shape = "format: 1\nobjects:\n- type: spaceship\n  name: x\n";
    let text = Document::from_yaml(wrong_shape).unwrap_err().to_string();
    assert!(text.contains("line 3, column") && text.contains("spaceship"), "{text}");

    let wrong_value = "format: 1\nobjects:\n- type: dn\n  name: x\n  fields:\n    number:\n      strr: x\n";
    let text = Document::from_yaml(wrong_value).unwrap_err().to_string();
    assert!(text.contains("line 7, column") && text.contains("strr"), "{text}");

    assert!(Document::from_yaml("").is_err(), "an empty text is not a document");
}

#[test]
fn formats_by_name_and_extension() {
    assert_eq!(TextFormat::from_file_name("config.yaml"), Some(TextFormat::Yaml));
    assert_eq!(TextFormat::from_file_name("dir.v2/config.YML"), Some(TextFormat::Yaml));
    assert_eq!(TextFormat::from_file_name("config.json"), Some(TextFormat::Json));
    assert_eq!(TextFormat::from_file_name("config.txt"), None);
    assert_eq!(TextFormat::from_file_name("config"), None);
    assert_eq!("YAML".parse::<TextFormat>(), Ok(TextFormat::Yaml));
    assert_eq!("json".parse::<TextFormat>(), Ok(TextFormat::Json));
    assert!("toml".parse::<TextFormat>().is_err());
    assert_eq!(TextFormat::Yaml.to_string(), "yaml");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any strings, as names, values and references, survive JSON → YAML → JSON.
    #[test]
    fn any_strings_survive_the_round_trip(values in prop::collection::vec(any::<String>(), 1..6), name in any::<String>()) {
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let document = doc_with(&name, &refs);
        let json = document.to_json();
        let back = Document::from_yaml(&Document::from_json(&json).unwrap().to_yaml()).unwrap();
        prop_assert_eq!(back.to_json(), json);
    }
}
