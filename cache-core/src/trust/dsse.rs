//! DSSE envelopes and the in-toto statements they carry (attestations, and
//! cosign 3's image signatures).

use super::cert::b64;
use crate::digest::Digest;

/// The payload type of an in-toto statement.
pub(crate) const IN_TOTO: &str = "application/vnd.in-toto+json";

/// A DSSE envelope.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    pub(crate) payload_type: String,
    pub(crate) payload: Vec<u8>,
    /// Each signature, decoded.
    pub(crate) signatures: Vec<Vec<u8>>,
}

impl Envelope {
    pub(crate) fn from_json(v: &serde_json::Value) -> Result<Envelope, String> {
        let payload_type = v["payloadType"]
            .as_str()
            .ok_or("DSSE envelope without a payloadType")?
            .to_owned();
        let payload = b64(v["payload"]
            .as_str()
            .ok_or("DSSE envelope without a payload")?)?;
        let signatures = v["signatures"]
            .as_array()
            .ok_or("DSSE envelope without signatures")?
            .iter()
            .filter_map(|s| s["sig"].as_str())
            .map(b64)
            .collect::<Result<Vec<_>, _>>()?;
        if signatures.is_empty() {
            return Err("DSSE envelope without signatures".into());
        }
        Ok(Envelope {
            payload_type,
            payload,
            signatures,
        })
    }

    /// What is signed: the pre-authentication encoding of type and payload.
    pub(crate) fn pae(&self) -> Vec<u8> {
        let mut out = format!(
            "DSSEv1 {} {} {} ",
            self.payload_type.len(),
            self.payload_type,
            self.payload.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.payload);
        out
    }

    /// The in-toto statement it carries.
    pub(crate) fn statement(&self) -> Result<Statement, String> {
        if self.payload_type != IN_TOTO {
            return Err(format!(
                "DSSE payload type {:?} is not an in-toto statement",
                self.payload_type
            ));
        }
        Statement::from_json(&self.payload)
    }
}

/// An in-toto statement (v0.1 or v1).
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub(crate) predicate_type: String,
    /// Each subject's digests: (algorithm, hex).
    pub(crate) subjects: Vec<(String, String)>,
    pub(crate) predicate: serde_json::Value,
}

impl Statement {
    fn from_json(bytes: &[u8]) -> Result<Statement, String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("in-toto statement: {e}"))?;
        let t = v["_type"].as_str().unwrap_or_default();
        if !t.starts_with("https://in-toto.io/Statement/") {
            return Err(format!("{t:?} is not an in-toto statement type"));
        }
        let subjects = v["subject"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| {
                s["digest"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(alg, hex)| Some((alg.clone(), hex.as_str()?.to_owned())))
            })
            .collect();
        Ok(Statement {
            predicate_type: v["predicateType"].as_str().unwrap_or_default().to_owned(),
            subjects,
            predicate: v["predicate"].clone(),
        })
    }

    /// Whether a subject of the statement is `d`.
    pub(crate) fn covers(&self, d: &Digest) -> bool {
        self.subjects
            .iter()
            .any(|(alg, hex)| alg == d.algorithm().as_str() && hex.eq_ignore_ascii_case(d.hex()))
    }

    /// The subjects, for messages.
    pub(crate) fn subjects_text(&self) -> String {
        self.subjects
            .iter()
            .map(|(a, h)| format!("{a}:{h}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The predicate's value at a dotted path (`runDetails.builder.id`),
    /// as text (strings as they are, anything else as JSON).
    pub(crate) fn field(&self, path: &str) -> Option<String> {
        let mut v = &self.predicate;
        for part in path.split('.') {
            v = match v {
                serde_json::Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
                _ => v.get(part)?,
            };
        }
        Some(match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_follows_the_dsse_spec() {
        // The spec's example: DSSEv1 29 http://example.com/HelloWorld 11 hello world
        let e = Envelope {
            payload_type: "http://example.com/HelloWorld".into(),
            payload: b"hello world".to_vec(),
            signatures: vec![],
        };
        assert_eq!(
            e.pae(),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn statements_name_their_subjects_and_fields() {
        let d = Digest::sha256_of(b"img");
        let s = Statement::from_json(
            format!(
                r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"name":"x","digest":{{"sha256":"{}"}}}}],"predicateType":"https://slsa.dev/provenance/v1","predicate":{{"runDetails":{{"builder":{{"id":"https://b"}}}},"list":[1,{{"a":"z"}}]}}}}"#,
                d.hex()
            )
            .as_bytes(),
        )
        .unwrap();
        assert!(s.covers(&d));
        assert!(!s.covers(&Digest::sha256_of(b"other")));
        assert_eq!(
            s.field("runDetails.builder.id").as_deref(),
            Some("https://b")
        );
        assert_eq!(s.field("list.1.a").as_deref(), Some("z"));
        assert_eq!(s.field("list.0").as_deref(), Some("1"));
        assert_eq!(s.field("nothing.here"), None);
        assert!(Statement::from_json(br#"{"_type":"other"}"#).is_err());
    }
}
