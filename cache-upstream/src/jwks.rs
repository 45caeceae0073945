//! Fetching OIDC providers' JWKS documents for `cache_core::server`'s
//! workload identities (feature `jwks`), under the address policy the
//! registry client applies to redirects and token realms.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::server::JwksFetch;
use futures::StreamExt;
use url::Url;

use crate::policy::{AddressPolicy, GuardedResolver, refused_in};

/// How long one JWKS fetch may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(15);

/// A [`JwksFetch`] over HTTPS (or HTTP on loopback): the URL and every
/// redirect (at most 3) must resolve to public addresses unless their host
/// is among the `internal_hosts` a fetch is given (the provider's
/// `jwks_hosts`), as redirects and token realms of upstreams must; the
/// body is read up to the size given, no further.
///
/// ```no_run
/// # async fn f() -> Result<(), String> {
/// use cache_core::server::JwksFetch;
/// let keys = cache_upstream::JwksClient::default()
///     .fetch("https://token.actions.githubusercontent.com/.well-known/jwks", &[], 256 * 1024)
///     .await?;
/// # let _ = keys; Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct JwksClient {
    _private: (),
}

impl JwksClient {
    /// A client with the system's root certificates.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl JwksFetch for JwksClient {
    async fn fetch(
        &self,
        url: &str,
        internal_hosts: &[String],
        max_bytes: usize,
    ) -> Result<Bytes, String> {
        let at = |e: &dyn std::fmt::Display| format!("JWKS {url}: {e}");
        let parsed = Url::parse(url).map_err(|e| at(&e))?;
        let policy = AddressPolicy::for_endpoints(&[], internal_hosts, &[]);
        policy.check_url(&parsed).map_err(|e| at(&e))?;
        let redirects = policy.clone();
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .dns_resolver(Arc::new(GuardedResolver {
                policy,
                hint: "is not listed in the provider's jwks_hosts",
            }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 3 {
                    return attempt.error("more than 3 redirects");
                }
                match redirects.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refused) => attempt.error(refused),
                }
            }))
            .build()
            .map_err(|e| at(&e))?;
        let resp = http
            .get(parsed)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| match refused_in(&e) {
                Some(r) => at(&r),
                None => at(&e),
            })?;
        if !resp.status().is_success() {
            return Err(at(&format!("answered {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > max_bytes as u64) {
            return Err(at(&format!("larger than {max_bytes} bytes")));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| at(&e))?;
            if body.len() + chunk.len() > max_bytes {
                return Err(at(&format!("larger than {max_bytes} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_internal_address_is_refused_unless_listed() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/jwks", axum::routing::get(|| async { r#"{"keys":[]}"# }))
            .route("/big", axum::routing::get(|| async { "x".repeat(5000) }))
            .route(
                "/away",
                axum::routing::get(|| async {
                    axum::response::Redirect::temporary("http://127.0.0.2:9/jwks")
                }),
            );
        tokio::spawn(async move { axum::serve(server, app).await });
        let url = format!("http://127.0.0.1:{port}/jwks");
        let c = JwksClient::new();
        let e = c.fetch(&url, &[], 1024).await.unwrap_err();
        assert!(e.contains("refused to connect to 127.0.0.1"), "{e}");
        let listed = ["127.0.0.1".to_owned()];
        assert_eq!(
            &c.fetch(&url, &listed, 1024).await.unwrap()[..],
            br#"{"keys":[]}"#
        );
        let e = c
            .fetch(&format!("http://127.0.0.1:{port}/big"), &listed, 1024)
            .await
            .unwrap_err();
        assert!(e.contains("larger than 1024 bytes"), "{e}");
        let e = c
            .fetch(&format!("http://127.0.0.1:{port}/away"), &listed, 1024)
            .await
            .unwrap_err();
        assert!(
            e.contains("127.0.0.2"),
            "a redirect to an unlisted internal host: {e}"
        );
    }
}
