//! A service's origin URL, Kong's `url` shorthand for protocol, host, port and path.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceUrl {
    pub https: bool,
    /// `host[:port]` exactly as written.
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// The path without the query; `None` when the URL has no path (Kong treats it as `/`).
    pub path: Option<String>,
}

impl ServiceUrl {
    pub fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// `host:port` as Kong sends it in `Host` when `preserve_host` is off: the port only when
    /// it is not the scheme's default.
    pub fn host_header(&self) -> String {
        let default_port = if self.https { 443 } else { 80 };
        if self.port == default_port {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl TryFrom<String> for ServiceUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let uri: http::Uri = text
            .parse()
            .map_err(|err| format!("invalid URL {text:?}: {err}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(format!(
                    "URL {text:?}: scheme {other:?} is not http or https"
                ));
            }
            None => {
                return Err(format!(
                    "URL {text:?} needs a scheme, e.g. \"http://{text}\""
                ));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("URL {text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "URL {text:?}: credentials in URLs are not supported"
            ));
        }
        if authority.host().is_empty() {
            return Err(format!("URL {text:?} has no host"));
        }
        if uri.query().is_some() {
            return Err(format!("URL {text:?}: a service URL takes no query string"));
        }
        // `http::Uri` reports "/" for "http://host" too; only keep a "/" that was written.
        let path = match uri.path() {
            "/" if !text.ends_with('/') => None,
            path => Some(path.to_string()),
        };
        Ok(Self {
            https,
            authority: authority.as_str().to_string(),
            host: authority.host().to_string(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            path,
        })
    }
}

impl From<ServiceUrl> for String {
    fn from(url: ServiceUrl) -> Self {
        format!(
            "{}://{}{}",
            url.scheme(),
            url.authority,
            url.path.as_deref().unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServiceUrl, String> {
        ServiceUrl::try_from(text.to_string())
    }

    #[test]
    fn splits_kong_url_shorthand() {
        let url = parse("http://127.0.0.1:9001/v1").unwrap();
        assert_eq!(
            (url.https, url.host.as_str(), url.port),
            (false, "127.0.0.1", 9001)
        );
        assert_eq!(url.path.as_deref(), Some("/v1"));
        assert_eq!(parse("http://origin").unwrap().path, None);
        assert_eq!(parse("http://origin/").unwrap().path.as_deref(), Some("/"));
        assert_eq!(parse("https://origin").unwrap().port, 443);
    }

    #[test]
    fn host_header_omits_default_ports() {
        assert_eq!(parse("http://a:80/x").unwrap().host_header(), "a");
        assert_eq!(parse("http://a:8080").unwrap().host_header(), "a:8080");
    }

    #[test]
    fn refuses_what_is_not_an_origin_url() {
        assert!(parse("ftp://a").unwrap_err().contains("not http"));
        assert!(parse("127.0.0.1:9000").is_err());
        assert!(parse("http://a/x?y=1").unwrap_err().contains("query"));
        assert!(parse("not a url").unwrap_err().contains("invalid URL"));
    }
}
