//! Keeps the records whose header `header` has the value `value` (both from
//! the deploy's config); drops the rest.

use floe_guest::{header, Config, Out, Record, Transform};

struct Filter {
    header: String,
    value: Vec<u8>,
}

impl Transform for Filter {
    fn init(config: &Config) -> Result<Self, String> {
        Ok(Filter {
            header: config.require("header")?.to_owned(),
            value: config.require("value")?.as_bytes().to_vec(),
        })
    }

    fn record(&mut self, record: Record, out: &mut Out) -> Result<(), String> {
        if header(&record, &self.header) == Some(&self.value[..]) {
            out.forward(0, record);
        }
        Ok(())
    }
}

floe_guest::export_transform!(Filter);
