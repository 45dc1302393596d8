//! The lake on S3 (or any S3-compatible store): `aws-sdk-s3` with the
//! standard credential chain, an optional custom endpoint and path-style
//! addressing, `If-None-Match: *` on every put so an object is never
//! overwritten, and short timeouts so an unreachable store fails fast (the
//! uploader keeps the segment in the spool and retries with backoff).

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use super::store::{Put, StoreError};
use crate::config::LakeConfig;

/// A bucket (and the client that reaches it).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    endpoint: Option<String>,
}

fn s3_error<E>(bucket: &str, key: &str, op: &'static str, e: &SdkError<E>) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    // The SDK's error chain names the cause (connection refused, timeout,
    // the service's error code and message); credentials never appear.
    let detail = match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let inner = se.err();
            format!(
                "HTTP {status} {}: {}",
                inner.code().unwrap_or("(no code)"),
                inner.message().unwrap_or("(no message)")
            )
        }
        other => DisplayErrorContext(other).to_string(),
    };
    StoreError::S3 {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        op,
        detail,
    }
}

impl S3Store {
    /// A client for `bucket` from `[lake]`. Nothing is sent yet: an
    /// unreachable store shows at the first upload, which is retried.
    pub async fn connect(config: &LakeConfig, bucket: &str) -> S3Store {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3).min(config.request_timeout))
            .operation_attempt_timeout(config.request_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(3));
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.path_style);
        if shared.region().is_none() {
            builder = builder.region(Region::from_static("us-east-1"));
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
        }
        S3Store {
            client: Client::from_conf(builder.build()),
            bucket: bucket.to_owned(),
            endpoint: config.endpoint.as_ref().map(|u| u.to_string()),
        }
    }

    pub async fn put_if_absent(&self, key: &str, body: Vec<u8>) -> Result<Put, StoreError> {
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/gzip")
            .if_none_match("*")
            .body(ByteStream::from(body))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Put::Created),
            // 412: the key exists (an upload retried after a crash or a
            // lost response); it holds the same bytes, nothing to do.
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 412 => Ok(Put::Exists),
            Err(e) => Err(s3_error(&self.bucket, key, "PutObject", &e)),
        }
    }

    /// Every `.jsonl.gz` key under `prefix` (treated as a directory).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = dir_prefix(prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error(&self.bucket, &prefix, "ListObjectsV2", &e))?;
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter(|k| k.ends_with(".jsonl.gz"))
                    .map(str::to_owned),
            );
        }
        out.sort();
        Ok(out)
    }

    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = dir_prefix(prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error(&self.bucket, &prefix, "ListObjectsV2", &e))?;
            out.extend(page.common_prefixes().iter().filter_map(|p| {
                let name = p.prefix()?.strip_prefix(prefix.as_str())?;
                Some(name.trim_end_matches('/').to_owned())
            }));
        }
        out.sort();
        Ok(out)
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error(&self.bucket, key, "GetObject", &e))?;
        let body = object.body.collect().await.map_err(|e| StoreError::S3 {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            op: "GetObject",
            detail: format!("reading the body: {e}"),
        })?;
        Ok(body.into_bytes().to_vec())
    }

    pub fn describe(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("s3://{} at {endpoint}", self.bucket),
            None => format!("s3://{}", self.bucket),
        }
    }
}

/// `a/b` → `a/b/`; the root stays empty.
fn dir_prefix(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_directories() {
        assert_eq!(dir_prefix(""), "");
        assert_eq!(dir_prefix("/"), "");
        assert_eq!(dir_prefix("raw"), "raw/");
        assert_eq!(dir_prefix("raw/exchange=binance/"), "raw/exchange=binance/");
    }
}
