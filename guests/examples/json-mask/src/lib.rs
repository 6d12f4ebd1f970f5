//! Masks fields of JSON object values: each top-level field named in the
//! config's `fields` (comma-separated) has its value replaced by `"***"`.
//! A value that is not a JSON object fails the batch, which goes to the
//! dead-letter topic with the parse error in its `floe-error` header.

use floe_guest::{Config, Out, Record, Transform};
use serde_json::{Map, Value};

struct Mask {
    fields: Vec<String>,
}

impl Transform for Mask {
    fn init(config: &Config) -> Result<Self, String> {
        let fields = config
            .require("fields")?
            .split(',')
            .map(str::to_owned)
            .collect();
        Ok(Mask { fields })
    }

    fn record(&mut self, mut record: Record, out: &mut Out) -> Result<(), String> {
        if let Some(value) = &record.value {
            let mut object: Map<String, Value> = serde_json::from_slice(value)
                .map_err(|e| format!("offset {}: not a JSON object: {e}", record.offset))?;
            for field in &self.fields {
                if let Some(v) = object.get_mut(field) {
                    *v = Value::String("***".into());
                }
            }
            record.value = Some(serde_json::to_vec(&object).map_err(|e| e.to_string())?);
        }
        out.forward(0, record);
        Ok(())
    }
}

floe_guest::export_transform!(Mask);
