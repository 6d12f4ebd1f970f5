//! Every record to the first output, unchanged.

use floe_guest::{Config, Out, Record, Transform};

struct Identity;

impl Transform for Identity {
    fn init(_: &Config) -> Result<Self, String> {
        Ok(Identity)
    }

    fn record(&mut self, record: Record, out: &mut Out) -> Result<(), String> {
        out.forward(0, record);
        Ok(())
    }
}

floe_guest::export_transform!(Identity);
