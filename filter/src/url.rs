//! Splitting the URLs of the configuration (resources, key sets, feeds, endpoints) into what
//! Envoy's HTTP calls and the RFC 9728 metadata need. A leaf module.

/// The RFC 9728 well-known prefix.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The parameter names of a query string as the servers behind the filter may read them:
/// split at `&` and `;` (older frameworks split at both), percent- and `+`-decoded, lower-cased,
/// leading whitespace trimmed, and `.`, ` ` and `[` read as `_` (PHP's rule for names). A name a
/// server could take for `access_token` or `_method` is found whatever spelling hides it;
/// written here because the query parsers in crates each follow one framework's rules.
pub fn query_names(query: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    query.split(['&', ';']).map(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        let mut decoded = Vec::with_capacity(name.len());
        let mut bytes = name.bytes();
        while let Some(b) = bytes.next() {
            let b = match b {
                b'%' => {
                    let hex = [bytes.next(), bytes.next()];
                    match hex {
                        [Some(h), Some(l)] => std::str::from_utf8(&[h, l])
                            .ok()
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .unwrap_or(b'%'),
                        _ => b'%',
                    }
                }
                b'+' => b' ',
                b => b,
            };
            decoded.push(b.to_ascii_lowercase());
        }
        decoded
            .trim_ascii_start()
            .iter()
            .map(|b| {
                if matches!(b, b'.' | b' ' | b'[') {
                    b'_'
                } else {
                    *b
                }
            })
            .collect()
    })
}

/// Splits an absolute `http(s)` resource URL into its origin and its path.
pub fn split_resource(resource: &str) -> Result<(&str, &str), String> {
    if resource.contains('#') || resource.contains('?') {
        return Err("must not have a query or fragment (RFC 8707)".into());
    }
    let (authority, _) =
        split_url(resource).map_err(|m| format!("{m}, e.g. \"https://mcp.example.com/mcp\""))?;
    let scheme_len = if resource.starts_with("https://") {
        8
    } else {
        7
    };
    let origin_len = scheme_len + authority.len();
    let origin = resource.get(..origin_len).unwrap_or(resource);
    Ok((origin, resource.get(origin_len..).unwrap_or("")))
}

/// Splits an absolute http(s) URL into (authority, path-and-query) for `dispatch_http_call`.
pub fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must be an absolute http:// or https:// URL")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err("has no host".into());
    }
    Ok((authority, path))
}

/// The path-suffixed metadata path for a resource path (`/mcp` → `/.well-known/…/mcp`).
pub fn metadata_path(resource_path: &str) -> String {
    let trimmed = resource_path.trim_end_matches('/');
    format!("{WELL_KNOWN}{trimmed}")
}
