//! How a protobuf message becomes a table row, without per-type code.
//!
//! Each field maps to the column of the same name. When a table is first
//! used, every field is checked against its column's type and given a
//! conversion ([`Conv`]); a field without a column, or with a column of a
//! type it cannot be stored in, is an error naming the type, the field and
//! the column. Rows are written as JSON objects that PostgreSQL turns into
//! the table's row type with `json_populate_record(set)`, so the server does
//! the final, type-exact parsing; COPY is given the same values in its text
//! format.
//!
//! What fits in which column, and as what, is the table in the crate
//! documentation ("Messages onto tables", in `lib.rs`), which is the one
//! description users read: change it with [`plan`] and the writers here.
//! The replay test `every_field_kind_replays_into_its_column_type` applies
//! one field of each kind to a column of each kind it lists.
//!
//! Architecture invariant: this module knows nothing about connections; it
//! is given column types and produces JSON text.

use std::fmt::Write as _;

use prost_reflect::{
    DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value,
};

/// A column of a target table, as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    /// Column name.
    pub name: String,
    /// The type as SQL (`format_type`), for messages.
    pub display: String,
    /// `pg_type.typname` of the column's type, or of its element type for
    /// an array.
    pub base: String,
    /// `pg_type.typcategory` of the same type.
    pub category: char,
    /// True for an array column.
    pub is_array: bool,
    /// True for a generated column, which cannot be written.
    pub generated: bool,
}

#[cfg(test)]
impl Column {
    /// A plain (not array, not generated) column of type `base`, for tests.
    pub(crate) fn plain(name: &str, base: &str, category: char) -> Column {
        Column {
            name: name.into(),
            display: base.into(),
            base: base.into(),
            category,
            is_array: false,
            generated: false,
        }
    }
}

/// How a field's value becomes JSON for its column.
#[derive(Debug, Clone)]
pub(crate) enum Conv {
    /// Numbers, strings and booleans as themselves.
    Scalar,
    /// Bytes as `"\x…"`, bytea's hex input form.
    Bytes,
    /// An enum as its number.
    EnumNumber,
    /// An enum as its value name.
    EnumName(EnumDescriptor),
    /// `google.protobuf.Timestamp` as RFC 3339.
    Timestamp,
    /// `google.protobuf.Duration` as an interval.
    Duration,
    /// A wrapper message as its `value` field, NULL when absent.
    Wrapper(Box<Conv>),
    /// Any message or map as a JSON document.
    Document,
    /// A repeated field, element by element.
    List(Box<Conv>),
}

const WRAPPERS: [&str; 9] = [
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
];

/// True for a json or jsonb column (not an array of them).
pub(crate) fn is_json(column: &Column) -> bool {
    !column.is_array && matches!(column.base.as_str(), "json" | "jsonb")
}

fn is_integer(base: &str) -> bool {
    matches!(base, "int2" | "int4" | "int8" | "numeric")
}

fn is_float(base: &str) -> bool {
    matches!(base, "float4" | "float8" | "numeric")
}

fn is_texty(base: &str, category: char) -> bool {
    // 'S' is PostgreSQL's string category (text, varchar, char, name,
    // citext); 'E' are enum types.
    category == 'S' || category == 'E' || base == "json" || base == "jsonb"
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.full_name().to_string(),
        Kind::Enum(e) => e.full_name().to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The conversion that stores `field` in `column`, or why there is none.
pub(crate) fn plan(field: &FieldDescriptor, column: &Column) -> Result<Conv, String> {
    if column.generated {
        return Err(format!(
            "field {:?} maps to column {:?}, which is generated and cannot be written",
            field.name(),
            column.name
        ));
    }
    let mismatch = || {
        let what = if field.is_list() {
            format!("repeated {}", kind_name(&field.kind()))
        } else if field.is_map() {
            "map".to_string()
        } else {
            kind_name(&field.kind())
        };
        format!(
            "field {:?} ({what}) cannot be stored in column {:?} of type {}",
            field.name(),
            column.name,
            column.display
        )
    };
    if field.is_map() {
        return if is_json(column) {
            Ok(Conv::Document)
        } else {
            Err(mismatch())
        };
    }
    if field.is_list() {
        if is_json(column) {
            return element(&field.kind(), column, true)
                .map(|c| Conv::List(Box::new(c)))
                .ok_or_else(mismatch);
        }
        if !column.is_array {
            return Err(mismatch());
        }
        return element(&field.kind(), column, false)
            .map(|c| Conv::List(Box::new(c)))
            .ok_or_else(mismatch);
    }
    if column.is_array {
        return Err(mismatch());
    }
    element(&field.kind(), column, is_json(column)).ok_or_else(mismatch)
}

/// The conversion of one value of `kind` into the column's (element) type;
/// `json` when the column is a JSON document.
fn element(kind: &Kind, column: &Column, json: bool) -> Option<Conv> {
    let base = column.base.as_str();
    let cat = column.category;
    let ok = |fits: bool, conv: Conv| fits.then_some(conv);
    match kind {
        Kind::Bool => ok(json || base == "bool", Conv::Scalar),
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64
        | Kind::Uint64
        | Kind::Fixed64 => ok(json || is_integer(base) || is_float(base), Conv::Scalar),
        Kind::Float | Kind::Double => ok(json || is_float(base), Conv::Scalar),
        Kind::String => ok(
            json || is_texty(base, cat)
                || matches!(cat, 'D' | 'T' | 'I')
                || matches!(base, "uuid" | "xml" | "numeric"),
            Conv::Scalar,
        ),
        Kind::Bytes => ok(!json && base == "bytea", Conv::Bytes),
        Kind::Enum(e) => {
            if !json && is_integer(base) {
                Some(Conv::EnumNumber)
            } else if json || is_texty(base, cat) {
                Some(Conv::EnumName(e.clone()))
            } else {
                None
            }
        }
        Kind::Message(m) => message(m, column, json),
    }
}

fn message(m: &MessageDescriptor, column: &Column, json: bool) -> Option<Conv> {
    let base = column.base.as_str();
    match m.full_name() {
        "google.protobuf.Timestamp" => (json
            || matches!(base, "timestamptz" | "timestamp" | "date"))
        .then_some(Conv::Timestamp),
        "google.protobuf.Duration" => (json || base == "interval").then_some(Conv::Duration),
        name if WRAPPERS.contains(&name) => {
            let inner = m.get_field_by_name("value")?;
            element(&inner.kind(), column, json).map(|c| Conv::Wrapper(Box::new(c)))
        }
        _ => json.then_some(Conv::Document),
    }
}

/// A field and how it is written.
#[derive(Debug, Clone)]
pub(crate) struct FieldPlan {
    pub field: FieldDescriptor,
    /// The field's name as a JSON key, with its quotes and colon.
    key: String,
    conv: Conv,
    /// The column is json or jsonb: its text form is the value's JSON.
    json_column: bool,
}

impl FieldPlan {
    pub fn new(field: FieldDescriptor, conv: Conv, json_column: bool) -> Self {
        let key = format!("{}:", serde_json::Value::from(field.name()));
        FieldPlan {
            field,
            key,
            conv,
            json_column,
        }
    }

    pub fn name(&self) -> &str {
        self.field.name()
    }
}

/// Appends `msg` as a JSON object holding the `fields` of `plans`.
pub(crate) fn write_row(
    out: &mut String,
    plans: &[FieldPlan],
    fields: &[usize],
    msg: &DynamicMessage,
) -> Result<(), String> {
    out.push('{');
    for (n, &i) in fields.iter().enumerate() {
        let Some(plan) = plans.get(i) else {
            return Err(format!("internal: no field #{i}"));
        };
        if n > 0 {
            out.push(',');
        }
        out.push_str(&plan.key);
        if plan.field.supports_presence() && !msg.has_field(&plan.field) {
            out.push_str("null");
        } else {
            write_value(out, &plan.conv, &msg.get_field(&plan.field))
                .map_err(|e| format!("field {:?}: {e}", plan.name()))?;
        }
    }
    out.push('}');
    Ok(())
}

/// Appends `msg` as one row of `COPY ... FROM STDIN` text format holding
/// every field of `plans`, in order: tab-separated, `\N` for NULL,
/// backslash, tab, newline and carriage return escaped.
pub(crate) fn write_copy_row(
    out: &mut String,
    plans: &[FieldPlan],
    msg: &DynamicMessage,
) -> Result<(), String> {
    let mut text = String::new();
    for (n, plan) in plans.iter().enumerate() {
        if n > 0 {
            out.push('\t');
        }
        if plan.field.supports_presence() && !msg.has_field(&plan.field) {
            out.push_str("\\N");
            continue;
        }
        text.clear();
        let value = msg.get_field(&plan.field);
        let written = if plan.json_column {
            write_value(&mut text, &plan.conv, &value)
        } else {
            text_value(&mut text, &plan.conv, &value)
        };
        written.map_err(|e| format!("field {:?}: {e}", plan.name()))?;
        copy_escape(out, &text);
    }
    out.push('\n');
    Ok(())
}

fn copy_escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Appends the PostgreSQL text input form of `value`: what a column of the
/// planned type parses (arrays as array literals with every element
/// quoted).
fn text_value(out: &mut String, conv: &Conv, value: &Value) -> Result<(), String> {
    match (conv, value) {
        (Conv::List(inner), Value::List(items)) => {
            out.push('{');
            let mut element = String::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                element.clear();
                text_value(&mut element, inner, item)?;
                out.push('"');
                for c in element.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
            out.push('}');
            Ok(())
        }
        (Conv::Wrapper(inner), Value::Message(m)) => match m.get_field_by_name("value") {
            Some(v) => text_value(out, inner, &v),
            None => Err("wrapper message without a value field".into()),
        },
        (Conv::Bytes, Value::Bytes(b)) => {
            out.push_str("\\x");
            for byte in b.iter() {
                let _ = write!(out, "{byte:02x}");
            }
            Ok(())
        }
        (Conv::Scalar, Value::String(s)) => {
            out.push_str(s);
            Ok(())
        }
        (Conv::Scalar, Value::F32(f)) => {
            float_text(out, f64::from(*f));
            Ok(())
        }
        (Conv::Scalar, Value::F64(f)) => {
            float_text(out, *f);
            Ok(())
        }
        (Conv::EnumName(e), Value::EnumNumber(n)) => match e.get_value(*n) {
            Some(v) => {
                out.push_str(v.name());
                Ok(())
            }
            None => Err(format!("{n} is not a value of enum {}", e.full_name())),
        },
        // Numbers, booleans, timestamps, durations and documents read the
        // same in JSON and in text, once a JSON string's quotes are off.
        (conv, value) => {
            let mut json = String::new();
            write_value(&mut json, conv, value)?;
            match json.strip_prefix('"').and_then(|j| j.strip_suffix('"')) {
                // Timestamps and durations: no escapes inside.
                Some(inner) if matches!(conv, Conv::Timestamp | Conv::Duration) => {
                    out.push_str(inner)
                }
                _ => out.push_str(&json),
            }
            Ok(())
        }
    }
}

fn float_text(out: &mut String, f: f64) {
    if f.is_finite() {
        let _ = write!(out, "{f}");
    } else if f.is_nan() {
        out.push_str("NaN");
    } else if f > 0.0 {
        out.push_str("Infinity");
    } else {
        out.push_str("-Infinity");
    }
}

/// The key of a row, for messages: `name=value` pairs of the given fields.
pub(crate) fn key_text(plans: &[FieldPlan], fields: &[usize], msg: &DynamicMessage) -> String {
    let mut parts = Vec::new();
    for &i in fields {
        if let Some(plan) = plans.get(i) {
            let mut value = String::new();
            if write_value(&mut value, &plan.conv, &msg.get_field(&plan.field)).is_err() {
                value = "?".into();
            }
            parts.push(format!("{}={value}", plan.name()));
        }
    }
    format!("({})", parts.join(", "))
}

/// Appends `s` as a JSON string (RFC 8259 escaping).
fn json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_float(out: &mut String, f: f64) {
    if f.is_finite() {
        let _ = write!(out, "{f}");
    } else if f.is_nan() {
        out.push_str("\"NaN\"");
    } else if f > 0.0 {
        out.push_str("\"Infinity\"");
    } else {
        out.push_str("\"-Infinity\"");
    }
}

fn write_value(out: &mut String, conv: &Conv, value: &Value) -> Result<(), String> {
    match (conv, value) {
        (Conv::List(inner), Value::List(items)) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, inner, item)?;
            }
            out.push(']');
            Ok(())
        }
        (Conv::Wrapper(inner), Value::Message(m)) => match m.get_field_by_name("value") {
            Some(v) => write_value(out, inner, &v),
            None => Err("wrapper message without a value field".into()),
        },
        (Conv::Timestamp, Value::Message(m)) => {
            let (seconds, nanos) = seconds_nanos(m)?;
            out.push('"');
            out.push_str(&rfc3339(seconds, nanos)?);
            out.push('"');
            Ok(())
        }
        (Conv::Duration, Value::Message(m)) => {
            let (seconds, nanos) = seconds_nanos(m)?;
            if nanos.unsigned_abs() >= 1_000_000_000
                || (seconds < 0 && nanos > 0)
                || (seconds > 0 && nanos < 0)
            {
                return Err(format!("invalid Duration ({seconds} s, {nanos} ns)"));
            }
            let sign = if seconds < 0 || nanos < 0 { "-" } else { "" };
            // Microseconds, truncated toward zero as the drivers do
            // (PostgreSQL would round the nanoseconds instead).
            let _ = write!(
                out,
                "\"{sign}{}.{:06} seconds\"",
                seconds.unsigned_abs(),
                nanos.unsigned_abs() / 1000
            );
            Ok(())
        }
        (Conv::Document, v) => {
            let json = document(v)?;
            out.push_str(&json);
            Ok(())
        }
        (Conv::Bytes, Value::Bytes(b)) => {
            out.push_str("\"\\\\x");
            for byte in b.iter() {
                let _ = write!(out, "{byte:02x}");
            }
            out.push('"');
            Ok(())
        }
        (Conv::EnumNumber, Value::EnumNumber(n)) => {
            let _ = write!(out, "{n}");
            Ok(())
        }
        (Conv::EnumName(e), Value::EnumNumber(n)) => match e.get_value(*n) {
            Some(v) => {
                json_string(out, v.name());
                Ok(())
            }
            None => Err(format!("{n} is not a value of enum {}", e.full_name())),
        },
        (Conv::Scalar, v) => scalar(out, v),
        (_, v) => Err(format!("value {v:?} does not match its field's type")),
    }
}

fn scalar(out: &mut String, value: &Value) -> Result<(), String> {
    match value {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::I32(n) => {
            let _ = write!(out, "{n}");
        }
        Value::I64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::U32(n) => {
            let _ = write!(out, "{n}");
        }
        Value::U64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::F32(f) => write_float(out, f64::from(*f)),
        Value::F64(f) => write_float(out, *f),
        Value::String(s) => json_string(out, s),
        Value::EnumNumber(n) => {
            let _ = write!(out, "{n}");
        }
        other => return Err(format!("value {other:?} is not a scalar")),
    }
    Ok(())
}

/// Messages in JSON documents use their proto field names, like columns.
const DOCUMENT_JSON: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .skip_default_fields(false);

fn document(value: &Value) -> Result<String, String> {
    match value {
        Value::Message(m) => {
            let mut ser = serde_json::Serializer::new(Vec::new());
            m.serialize_with_options(&mut ser, &DOCUMENT_JSON)
                .map_err(|e| e.to_string())?;
            String::from_utf8(ser.into_inner()).map_err(|e| e.to_string())
        }
        Value::Map(map) => {
            // Keys sorted, so equal maps give equal documents.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let mut out = String::from("{");
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let key = match k {
                    prost_reflect::MapKey::Bool(b) => b.to_string(),
                    prost_reflect::MapKey::I32(n) => n.to_string(),
                    prost_reflect::MapKey::I64(n) => n.to_string(),
                    prost_reflect::MapKey::U32(n) => n.to_string(),
                    prost_reflect::MapKey::U64(n) => n.to_string(),
                    prost_reflect::MapKey::String(s) => s.clone(),
                };
                json_string(&mut out, &key);
                out.push(':');
                match v {
                    Value::Message(_) | Value::Map(_) => out.push_str(&document(v)?),
                    Value::Bytes(b) => {
                        json_string(&mut out, &crate::hex::hex(b));
                    }
                    other => scalar(&mut out, other)?,
                }
            }
            out.push('}');
            Ok(out)
        }
        other => Err(format!("value {other:?} is not a message or map")),
    }
}

fn seconds_nanos(m: &DynamicMessage) -> Result<(i64, i32), String> {
    let seconds = m
        .get_field_by_name("seconds")
        .and_then(|v| v.as_i64())
        .ok_or_else(|| format!("{} without seconds", m.descriptor().full_name()))?;
    let nanos = m
        .get_field_by_name("nanos")
        .and_then(|v| v.as_i32())
        .ok_or_else(|| format!("{} without nanos", m.descriptor().full_name()))?;
    Ok((seconds, nanos))
}

/// Smallest and largest seconds of a valid `Timestamp` (0001-01-01 to
/// 9999-12-31, UTC).
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// PostgreSQL's epoch, 2000-01-01 00:00:00 UTC, in seconds since the Unix
/// epoch.
const PG_EPOCH: i64 = 946_684_800;

/// `seconds` and `nanos` since the Unix epoch at PostgreSQL's precision,
/// as the drivers store them: microseconds since 2000-01-01, truncated
/// toward zero (rust-postgres and diesel from `SystemTime`, chrono and
/// `time` values alike). After 2000 that drops the nanoseconds; before
/// 2000 it moves a time with a fraction of a microsecond up to the next
/// microsecond.
fn driver_micros(seconds: i64, nanos: i32) -> (i64, i32) {
    let micros = nanos / 1000;
    if seconds >= PG_EPOCH || nanos % 1000 == 0 {
        (seconds, micros)
    } else if micros + 1 == 1_000_000 {
        (seconds + 1, 0)
    } else {
        (seconds, micros + 1)
    }
}

/// `seconds` and `nanos` since the Unix epoch as RFC 3339 in UTC, with the
/// microseconds a driver would have stored ([`driver_micros`]): a replica
/// gets exactly what the source's application wrote.
pub(crate) fn rfc3339(seconds: i64, nanos: i32) -> Result<String, String> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
        return Err(format!(
            "Timestamp ({seconds} s, {nanos} ns) is outside 0001-01-01 to 9999-12-31"
        ));
    }
    let (seconds, micros) = driver_micros(seconds, nanos);
    if seconds > MAX_SECONDS {
        return Err(format!(
            "Timestamp ({seconds} s, {nanos} ns) is outside 0001-01-01 to 9999-12-31"
        ));
    }
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    Ok(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    ))
}

/// Year, month and day of the `days`-th day after 1970-01-01 (Howard
/// Hinnant's algorithm, proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::{Account, User};
    use prost::Message;

    fn field(type_name: &str, name: &str) -> FieldDescriptor {
        crate::testing::catalog()
            .get(type_name)
            .unwrap()
            .descriptor()
            .get_field_by_name(name)
            .unwrap()
    }

    #[test]
    fn compatible_columns_are_accepted_and_others_named() {
        let age = field("test.v1.User", "age");
        assert!(plan(&age, &Column::plain("age", "int4", 'N')).is_ok());
        assert!(plan(&age, &Column::plain("age", "numeric", 'N')).is_ok());
        let err = plan(&age, &Column::plain("age", "text", 'S')).unwrap_err();
        assert!(
            err.contains("field \"age\" (int32)") && err.contains("column \"age\" of type text"),
            "{err}"
        );
        let avatar = field("test.v1.User", "avatar");
        assert!(plan(&avatar, &Column::plain("avatar", "bytea", 'U')).is_ok());
        assert!(plan(&avatar, &Column::plain("avatar", "text", 'S')).is_err());
        let created = field("test.v1.Account", "created_at");
        assert!(plan(&created, &Column::plain("created_at", "timestamptz", 'D')).is_ok());
        assert!(plan(&created, &Column::plain("created_at", "jsonb", 'U')).is_ok());
        assert!(plan(&created, &Column::plain("created_at", "int8", 'N')).is_err());
        let mut generated = Column::plain("email", "text", 'S');
        generated.generated = true;
        assert!(plan(&field("test.v1.User", "email"), &generated)
            .unwrap_err()
            .contains("generated"));
        let mut array = Column::plain("email", "text", 'S');
        array.is_array = true;
        assert!(plan(&field("test.v1.User", "email"), &array).is_err());
    }

    fn row(type_name: &str, bytes: &[u8], columns: &[(&str, &str, char)]) -> String {
        let catalog = crate::testing::catalog();
        let msg = catalog.decode_dynamic(type_name, bytes).unwrap();
        let plans: Vec<FieldPlan> = columns
            .iter()
            .map(|(name, base, cat)| {
                let f = field(type_name, name);
                let col = Column::plain(name, base, *cat);
                let conv = plan(&f, &col).unwrap();
                FieldPlan::new(f, conv, is_json(&col))
            })
            .collect();
        let mut out = String::new();
        write_row(
            &mut out,
            &plans,
            &(0..plans.len()).collect::<Vec<_>>(),
            &msg,
        )
        .unwrap();
        out
    }

    #[test]
    fn rows_are_json_with_nulls_for_unset_optional_fields() {
        let user = User {
            id: "u\"1".into(),
            age: Some(7),
            avatar: vec![0, 255],
            ..Default::default()
        };
        let json = row(
            "test.v1.User",
            &user.encode_to_vec(),
            &[
                ("id", "text", 'S'),
                ("phone", "text", 'S'),
                ("age", "int4", 'N'),
                ("active", "bool", 'B'),
                ("avatar", "bytea", 'U'),
            ],
        );
        assert_eq!(
            json,
            r#"{"id":"u\"1","phone":null,"age":7,"active":false,"avatar":"\\x00ff"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["avatar"], "\\x00ff");
    }

    #[test]
    fn timestamps_become_rfc3339_and_unset_ones_null() {
        let account = Account {
            id: "a".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            ..Default::default()
        };
        let cols = [("created_at", "timestamptz", 'D')];
        assert_eq!(
            row("test.v1.Account", &account.encode_to_vec(), &cols),
            r#"{"created_at":"2023-11-14T22:13:20.000000Z"}"#
        );
        let unset = Account::default();
        assert_eq!(
            row("test.v1.Account", &unset.encode_to_vec(), &cols),
            r#"{"created_at":null}"#
        );
        assert_eq!(rfc3339(0, 0).unwrap(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(-1, 0).unwrap(), "1969-12-31T23:59:59.000000Z");
        assert_eq!(
            rfc3339(MIN_SECONDS, 0).unwrap(),
            "0001-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339(MAX_SECONDS, 999_999_999).unwrap(),
            "9999-12-31T23:59:59.999999Z"
        );
        assert!(rfc3339(MAX_SECONDS + 1, 0).is_err());
        assert!(rfc3339(0, -1).is_err());
    }

    #[test]
    fn sub_microsecond_times_are_truncated_toward_2000_as_the_drivers_store_them() {
        // After 2000-01-01 the nanoseconds are dropped.
        assert_eq!(
            rfc3339(1_700_000_000, 123_456_789).unwrap(),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            rfc3339(PG_EPOCH, 999).unwrap(),
            "2000-01-01T00:00:00.000000Z"
        );
        // Before it, toward 2000 is up.
        assert_eq!(rfc3339(-1, 500).unwrap(), "1969-12-31T23:59:59.000001Z");
        assert_eq!(
            rfc3339(PG_EPOCH - 1, 999_999_500).unwrap(),
            "2000-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339(PG_EPOCH - 1, 999_998_000).unwrap(),
            "1999-12-31T23:59:59.999998Z"
        );
        // The driver's own arithmetic, for comparison: microseconds since
        // 2000 truncated toward zero.
        let driver = |seconds: i64, nanos: i64| {
            let rel = i128::from(seconds - PG_EPOCH) * 1_000_000_000 + i128::from(nanos);
            let micros = rel / 1000; // Rust integer division truncates toward zero.
            let (s, us) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
            (
                i64::try_from(s).unwrap() + PG_EPOCH,
                i32::try_from(us).unwrap(),
            )
        };
        for (s, n) in [
            (1_700_000_000, 123_456_789),
            (-1, 500),
            (PG_EPOCH - 1, 999_999_500),
            (PG_EPOCH - 86_400, 1),
            (0, 999_999_999),
            (PG_EPOCH, 0),
        ] {
            let nanos = i32::try_from(n).unwrap();
            assert_eq!(driver_micros(s, nanos), driver(s, n), "({s}, {n})");
        }
    }

    #[test]
    fn strings_are_escaped_as_json() {
        for text in [
            "plain",
            "quote \" backslash \\ slash /",
            "line\nbreak\ttab\r",
            "\u{0}\u{1f}\u{7f}",
            "ünïcödé ✓",
        ] {
            let mut out = String::new();
            json_string(&mut out, text);
            let back: String = serde_json::from_str(&out).unwrap();
            assert_eq!(back, text, "{out}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_round_trips_through_json(text in ".*") {
            let mut out = String::new();
            json_string(&mut out, &text);
            let back: String = serde_json::from_str(&out).unwrap();
            proptest::prop_assert_eq!(back, text);
        }
    }

    #[test]
    fn non_finite_floats_are_strings() {
        let mut out = String::new();
        write_float(&mut out, f64::NAN);
        write_float(&mut out, f64::NEG_INFINITY);
        write_float(&mut out, 1.5);
        assert_eq!(out, "\"NaN\"\"-Infinity\"1.5");
    }
}
