//! Reading request bodies where serde's defaults and the OpenAPI document (JSON Schema) would
//! disagree, so that a body is accepted exactly when the document says it is valid:
//!
//! - [`text`], [`opt_text`]: a string of at most `N` bytes, refused before anything trims it
//!   (`maxLength: N`; the gateway counts bytes of UTF-8, the schema characters: the same for ASCII).
//! - [`opt_integer`], [`present_integer`]: an integer, also when written `5.0` (JSON Schema's
//!   `integer` admits a number with a zero fraction; serde refuses it for integer types).
//! - [`present`]: an optional field that may be left out but not given as `null`.
//!
//! Fields using them carry `#[serde(default, deserialize_with = "…")]`; a refusal is a serde
//! error, answered 400 `bad_request` like every body that does not parse.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A string of at most `N` bytes.
pub(super) fn text<'de, const N: usize, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.len() > N {
        return Err(D::Error::custom(format!("a text of {} bytes; at most {N} are taken", text.len())));
    }
    Ok(text)
}

/// [`text`], or `null`, or left out.
pub(super) fn opt_text<'de, const N: usize, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        Some(text) if text.len() > N => {
            Err(D::Error::custom(format!("a text of {} bytes; at most {N} are taken", text.len())))
        }
        other => Ok(other),
    }
}

/// An integer of type `T` (`5` or `5.0`), or `null`, or left out.
pub(super) fn opt_integer<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
where
    T: TryFrom<i128>,
    D: Deserializer<'de>,
{
    match Option::<serde_json::Number>::deserialize(deserializer)? {
        Some(number) => whole(&number).map(Some).map_err(D::Error::custom),
        None => Ok(None),
    }
}

/// An integer of type `T` (`5` or `5.0`), or left out; not `null`.
pub(super) fn present_integer<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
where
    T: TryFrom<i128>,
    D: Deserializer<'de>,
{
    let number = serde_json::Number::deserialize(deserializer)?;
    whole(&number).map(Some).map_err(D::Error::custom)
}

fn whole<T: TryFrom<i128>>(number: &serde_json::Number) -> Result<T, String> {
    let whole = if let Some(n) = number.as_i64() {
        i128::from(n)
    } else if let Some(n) = number.as_u64() {
        i128::from(n)
    } else {
        match number.as_f64() {
            // Beyond 1e30 it is out of every range below anyway.
            Some(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30 => f as i128,
            _ => return Err(format!("{number} is not a whole number")),
        }
    };
    T::try_from(whole).map_err(|_| format!("{number} is out of range"))
}

/// A value that may be left out (`None`), but not given as `null`.
pub(super) fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "super::opt_integer")]
        n: Option<u32>,
        #[serde(default, deserialize_with = "super::opt_text::<4, _>")]
        t: Option<String>,
        #[serde(default, deserialize_with = "super::present")]
        b: Option<bool>,
        #[serde(default, deserialize_with = "super::present_integer")]
        i: Option<i64>,
    }

    fn parse(json: &str) -> Result<Body, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_texts_and_nulls_as_the_schema_has_them() {
        assert_eq!(parse(r#"{"n": 5}"#).unwrap().n, Some(5));
        assert_eq!(parse(r#"{"n": 5.0}"#).unwrap().n, Some(5));
        assert_eq!(parse(r#"{"n": null}"#).unwrap().n, None);
        assert_eq!(parse("{}").unwrap().n, None);
        for refused in [r#"{"n": 5.5}"#, r#"{"n": -1}"#, r#"{"n": 4294967296}"#, r#"{"n": 1e300}"#, r#"{"n": "5"}"#] {
            assert!(parse(refused).is_err(), "{refused}");
        }
        assert_eq!(parse(r#"{"t": "abcd"}"#).unwrap().t.as_deref(), Some("abcd"));
        assert!(parse(r#"{"t": "abcde"}"#).is_err());
        assert!(parse(r#"{"t": "ééé"}"#).is_err(), "bytes are counted");
        assert_eq!(parse(r#"{"b": false}"#).unwrap().b, Some(false));
        assert_eq!(parse("{}").unwrap().b, None);
        assert!(parse(r#"{"b": null}"#).is_err());
        assert_eq!(parse(r#"{"i": -3.0}"#).unwrap().i, Some(-3));
        assert_eq!(parse("{}").unwrap().i, None);
        assert!(parse(r#"{"i": null}"#).is_err());
    }
}
