//! A reply the guest made (401, 404, 429, 503, ...) as a hyper response, checked like any
//! other decision: a status and headers the guest got wrong fail the request (500), they are
//! never sent half-valid.

use crate::responses::{HostFailure, ResponseBody, full_body};
use crate::runtime::component::policy_api::Reply;

pub fn to_response(reply: Reply) -> Result<hyper::Response<ResponseBody>, HostFailure> {
    let invalid = |what: String| {
        tracing::error!("refused the guest's reply: {what}");
        HostFailure::Internal(format!("invalid reply from the guest: {what}"))
    };
    let status = http::StatusCode::from_u16(reply.status)
        .ok()
        .filter(|status| !status.is_informational())
        .ok_or_else(|| invalid(format!("status {}", reply.status)))?;
    let mut response = hyper::Response::new(full_body(reply.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for line in super::field_block::lines(&reply.headers) {
        let name = super::plan::name(line.name).map_err(|_| {
            invalid(format!(
                "header name {:?}",
                String::from_utf8_lossy(line.name)
            ))
        })?;
        let value = http::HeaderValue::from_bytes(&reply.headers[line.value])
            .map_err(|_| invalid(format!("value of header {name}")))?;
        if super::plan::is_hop_by_hop(&name) {
            continue;
        }
        headers.append(name, value);
    }
    Ok(response)
}
