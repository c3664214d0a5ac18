//! Kong 3.9 compatibility, one test per behaviour a client or an origin can observe
//! (`shared/reference/kong.md`).

mod errors;
mod headers;
mod key_auth_options;
mod key_lookup;
mod routing;
