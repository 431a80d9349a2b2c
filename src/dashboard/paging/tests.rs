use super::*;

#[test]
fn query_parameters() {
    assert_eq!(parse_limit(None), Ok(PAGE_LIMIT_DEFAULT));
    assert_eq!(parse_limit(Some("7")), Ok(7));
    for bad in ["0", "-1", "x", "501"] {
        assert!(parse_limit(Some(bad)).is_err(), "{bad}");
    }
    assert_eq!(parse_filter("q", Some("")), Ok(None));
    assert_eq!(parse_filter("q", Some("x")), Ok(Some("x".into())));
    assert!(parse_filter("q", Some(&"x".repeat(FILTER_LEN_MAX + 1))).is_err());
}
