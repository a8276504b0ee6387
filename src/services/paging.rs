//! Paging and row limits of the list routes, validated in one place so every route
//! answers the same 400 for the same mistake.

use crate::error::AppError;
use crate::store::Page;

/// Largest page size of `/key/list`, `/team/list` and `/jwt/key/mapping/list`.
pub const MAX_PAGE_SIZE: u64 = 1000;
/// Largest page number: far beyond any real table, and small enough that the offset
/// (`(page - 1) * size`) stays exact in every database.
pub const MAX_PAGE: u64 = 1_000_000;
/// Largest `limit` of `/spend/logs`.
pub const MAX_LOG_ROWS: u64 = 10_000;

/// Validates list-query paging: 1-based `page`, `size` 1..=1000 (default 50).
pub fn page(page: Option<u64>, size: Option<u64>) -> Result<Page, AppError> {
    let page = page.unwrap_or(1);
    let size = size.unwrap_or(50);
    if page == 0 || page > MAX_PAGE {
        return Err(AppError::invalid(format!(
            "field `page` must be between 1 and {MAX_PAGE}"
        )));
    }
    if size == 0 || size > MAX_PAGE_SIZE {
        return Err(AppError::invalid(format!(
            "field `size` must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    Ok(Page { page, size })
}

/// Validates a `limit` query parameter: 1..=`max`, `default` when absent.
pub fn limit(value: Option<u64>, default: u64, max: u64) -> Result<u64, AppError> {
    let limit = value.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(AppError::invalid(format!(
            "field `limit` must be between 1 and {max}"
        )));
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_limits_are_bounded() {
        assert_eq!(
            page(None, None).ok().map(|p| (p.page, p.size)),
            Some((1, 50))
        );
        assert!(page(Some(0), None).is_err());
        assert!(page(Some(MAX_PAGE + 1), None).is_err());
        assert!(page(Some(u64::MAX), None).is_err());
        assert!(page(None, Some(0)).is_err());
        assert!(page(None, Some(MAX_PAGE_SIZE + 1)).is_err());
        assert_eq!(limit(None, 100, 10_000).ok(), Some(100));
        assert!(limit(Some(0), 100, 10_000).is_err());
        assert!(limit(Some(10_001), 100, 10_000).is_err());
    }
}
