//! Building a `fields` resource with one host call.

use wasip2::http::types::Fields;

/// Headers gathered in guest memory and handed to the host in one call (`fields.from-list`)
/// instead of one host call per header.
#[derive(Default)]
pub struct HeaderList(std::cell::RefCell<Vec<(String, Vec<u8>)>>);

impl HeaderList {
    pub fn append(&self, name: &str, value: &[u8]) {
        self.0.borrow_mut().push((name.to_string(), value.to_vec()));
    }

    pub fn into_fields(self) -> Fields {
        let list = self.0.into_inner();
        match Fields::from_list(&list) {
            Ok(fields) => fields,
            // A host that forbids one of them (e.g. `host` outside keygate): add one by one,
            // leaving out only what it refuses.
            Err(_) => {
                let fields = Fields::new();
                for (name, value) in &list {
                    let _ = fields.append(name, value);
                }
                fields
            }
        }
    }
}
