//! The dashboard's page parameters (sans-IO): `limit` and the text filters, checked
//! before a query goes to the services. What a page holds and how the shards' parts are
//! merged is the owner's: agents in `registry::query`, tasks in `hub::query`.

/// Rows per page when `limit` is not given.
pub const PAGE_LIMIT_DEFAULT: usize = 50;
/// The most rows a page may ask for (larger: 400): bounds each shard's reply.
pub const PAGE_LIMIT_MAX: usize = 500;
/// Longest text filter accepted (longer: 400).
pub const FILTER_LEN_MAX: usize = 256;

/// `limit` of a paged route: default [`PAGE_LIMIT_DEFAULT`], 1..=[`PAGE_LIMIT_MAX`].
pub fn parse_limit(raw: Option<&str>) -> Result<usize, String> {
    match raw {
        None | Some("") => Ok(PAGE_LIMIT_DEFAULT),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=PAGE_LIMIT_MAX).contains(&n) => Ok(n),
            _ => Err(format!("limit must be 1..={PAGE_LIMIT_MAX}")),
        },
    }
}

/// A text filter: `None` when absent or empty; too long is an error.
pub fn parse_filter(name: &str, raw: Option<&str>) -> Result<Option<String>, String> {
    match raw {
        None | Some("") => Ok(None),
        Some(s) if s.len() > FILTER_LEN_MAX => {
            Err(format!("{name} is longer than {FILTER_LEN_MAX} bytes"))
        }
        Some(s) => Ok(Some(s.to_owned())),
    }
}

#[cfg(test)]
mod tests;
