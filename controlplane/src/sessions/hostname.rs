//! Choosing a machine by hostname, shared by `GetSessionByHostname` and
//! `ResolveMachine`.

/// What a hostname lookup found among the candidates.
#[derive(Debug, PartialEq, Eq)]
pub enum HostnameMatch<T> {
    /// Exactly one hostname matched; this is its most recently active candidate.
    One(T),
    /// Several distinct hostnames matched; all candidates are returned,
    /// most recently active first.
    Ambiguous(Vec<T>),
    None,
}

/// Picks among `candidates` (hostname, last activity, value).
///
/// Hostnames compare ASCII case-insensitively (as DNS does). With
/// `partial` a candidate matches when `query` is a substring of its
/// hostname, but an exact match, if there is one, wins over substrings.
/// Several candidates sharing one hostname are not ambiguous: the most
/// recently active one is chosen.
pub fn match_hostname<T>(
    query: &str,
    partial: bool,
    candidates: Vec<(String, i64, T)>,
) -> HostnameMatch<T> {
    let query = query.trim().to_ascii_lowercase();
    if query.is_empty() {
        return HostnameMatch::None;
    }
    let (mut exact, mut substring): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .map(|(host, seen, value)| (host.to_ascii_lowercase(), seen, value))
        .filter(|(host, _, _)| *host == query || (partial && host.contains(&query)))
        .partition(|(host, _, _)| *host == query);
    let mut chosen = if exact.is_empty() {
        std::mem::take(&mut substring)
    } else {
        std::mem::take(&mut exact)
    };
    if chosen.is_empty() {
        return HostnameMatch::None;
    }
    chosen.sort_by_key(|c| std::cmp::Reverse(c.1));
    let first_host = chosen[0].0.clone();
    if chosen.iter().all(|(host, _, _)| *host == first_host) {
        let (_, _, value) = chosen.swap_remove(0);
        HostnameMatch::One(value)
    } else {
        HostnameMatch::Ambiguous(chosen.into_iter().map(|(_, _, v)| v).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[(&str, i64)]) -> Vec<(String, i64, String)> {
        list.iter()
            .map(|(h, t)| (h.to_string(), *t, format!("{h}@{t}")))
            .collect()
    }

    #[test]
    fn exact_match_is_case_insensitive() {
        let c = hosts(&[("Web-1", 1), ("web-10", 2)]);
        assert_eq!(
            match_hostname("web-1", false, c),
            HostnameMatch::One("Web-1@1".into())
        );
    }

    #[test]
    fn exact_lookup_ignores_substrings() {
        assert_eq!(
            match_hostname("web", false, hosts(&[("web-1", 1)])),
            HostnameMatch::None
        );
    }

    #[test]
    fn partial_match_finds_substrings() {
        let c = hosts(&[("db-main", 1), ("web-1", 2)]);
        assert_eq!(
            match_hostname("MAIN", true, c),
            HostnameMatch::One("db-main@1".into())
        );
    }

    #[test]
    fn several_hostnames_are_ambiguous_newest_first() {
        let c = hosts(&[("web-1", 1), ("web-2", 5), ("db", 9)]);
        assert_eq!(
            match_hostname("web", true, c),
            HostnameMatch::Ambiguous(vec!["web-2@5".to_string(), "web-1@1".to_string()])
        );
    }

    #[test]
    fn exact_match_beats_substrings_in_partial_mode() {
        let c = hosts(&[("web", 1), ("web-2", 5)]);
        assert_eq!(
            match_hostname("web", true, c),
            HostnameMatch::One("web@1".into())
        );
    }

    #[test]
    fn same_hostname_picks_most_recent() {
        let c = hosts(&[("web", 1), ("web", 7), ("web", 3)]);
        assert_eq!(
            match_hostname("web", false, c),
            HostnameMatch::One("web@7".into())
        );
    }

    #[test]
    fn empty_query_matches_nothing() {
        assert_eq!(
            match_hostname("  ", true, hosts(&[("web", 1)])),
            HostnameMatch::None
        );
    }
}
