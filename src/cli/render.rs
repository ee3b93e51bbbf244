//! How an entry is shown: a block of text, or one JSON object.

use std::borrow::Cow;

use oplog::Entry;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::{Failure, Output};

/// Messages are printed with their proto field names, so that they read
/// like the field masks and the table columns they map to, and with fields
/// at their default value included, so that every message is complete.
/// 64-bit integers stay strings, as in the canonical JSON mapping, because
/// many JSON readers would round them.
const MESSAGE_JSON: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .skip_default_fields(false);

/// An entry with its operations' messages decoded for display.
pub struct EntryView<'a> {
    entry: &'a Entry,
    messages: Vec<ProtoJson>,
}

impl<'a> EntryView<'a> {
    /// Decodes every message of `entry` with the type catalog it was
    /// written with.
    pub fn decode(entry: &'a Entry) -> Result<Self, Failure> {
        let messages = entry
            .operations
            .iter()
            .enumerate()
            .map(|(i, op)| {
                entry
                    .catalog
                    .decode_dynamic(&op.type_name, &op.value)
                    .map(ProtoJson)
                    .map_err(|e| {
                        Failure::msg(format!("{}, operation #{i}: {e}", entry.entry_ref()))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(EntryView { entry, messages })
    }

    /// The entry as one JSON object.
    pub fn json(&self) -> impl Serialize + '_ {
        let e = self.entry;
        EntryJson {
            id: e.id,
            uuid: e.uuid.to_string(),
            aggregate: &e.aggregate,
            seq: e.seq,
            format: e.format,
            key_id: &e.key_id,
            subject: e.subject.as_deref(),
            shredded: e.shredded,
            created_at: humantime::format_rfc3339_micros(e.created_at()).to_string(),
            metadata: MetadataJson(e.metadata.grouped()),
            messages: e
                .operations
                .iter()
                .zip(&self.messages)
                .map(|(op, message)| MessageJson {
                    type_name: &op.type_name,
                    op: op.op.as_str_name(),
                    field_mask: &op.field_mask,
                    null_mask: &op.null_mask,
                    message,
                })
                .collect(),
        }
    }

    /// The entry as a block of text: a header line, a metadata line when
    /// there is metadata, and a line per operation.
    pub fn write_text(&self, out: &mut Output) -> Result<(), Failure> {
        let e = self.entry;
        out.line(format_args!(
            "#{} {} seq {} key {} {}",
            e.id,
            word(&e.aggregate),
            e.seq,
            e.key_id,
            humantime::format_rfc3339_micros(e.created_at())
        ))?;
        if let Some(subject) = &e.subject {
            out.line(format_args!(
                "  subject {}{}",
                word(subject),
                if e.shredded {
                    ": shredded, the payload can no longer be read"
                } else {
                    ""
                }
            ))?;
        }
        if !e.metadata.is_empty() {
            let pairs: Vec<String> = e
                .metadata
                .iter()
                .map(|(k, v)| format!("{}={}", word(k), word(v)))
                .collect();
            out.line(format_args!("  {}", pairs.join(" ")))?;
        }
        for (op, message) in e.operations.iter().zip(&self.messages) {
            let mut line = format!("  {} {}", op.op.as_str_name(), op.type_name);
            if !op.field_mask.is_empty() {
                line.push_str(&format!(" mask: {}", op.field_mask.join(",")));
            }
            if !op.null_mask.is_empty() {
                line.push_str(&format!(" null: {}", op.null_mask.join(",")));
            }
            let json = serde_json::to_string(message)
                .map_err(|err| Failure::msg(format!("cannot print JSON: {err}")))?;
            out.line(format_args!("{line} {json}"))?;
        }
        Ok(())
    }
}

/// `text` as is when it reads as one word, else as a JSON string, so that
/// spaces, `=` or control characters in names and values cannot blur where
/// one field ends and the next begins.
pub fn word(text: &str) -> Cow<'_, str> {
    let plain = !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '=' || c == '"');
    if plain {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(serde_json::Value::from(text).to_string())
    }
}

#[derive(Serialize)]
struct EntryJson<'a> {
    id: i64,
    uuid: String,
    aggregate: &'a str,
    seq: i64,
    format: i16,
    key_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    shredded: bool,
    created_at: String,
    metadata: MetadataJson<'a>,
    messages: Vec<MessageJson<'a>>,
}

#[derive(Serialize)]
struct MessageJson<'a> {
    type_name: &'a str,
    op: &'static str,
    field_mask: &'a [String],
    null_mask: &'a [String],
    message: &'a ProtoJson,
}

/// Metadata as an object of arrays, keys in order of first appearance
/// (serde_json's own map would sort them).
struct MetadataJson<'a>(Vec<(&'a str, Vec<&'a str>)>);

impl Serialize for MetadataJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, values) in &self.0 {
            map.serialize_entry(key, values)?;
        }
        map.end()
    }
}

/// A decoded message, serialised with [`MESSAGE_JSON`] in field order.
struct ProtoJson(DynamicMessage);

impl Serialize for ProtoJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_with_options(serializer, &MESSAGE_JSON)
    }
}
