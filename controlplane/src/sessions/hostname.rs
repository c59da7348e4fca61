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

/// A machine that a hostname lookup may pick.
pub struct Candidate<T> {
    /// The hostname the machine reported.
    pub hostname: String,
    /// Last activity (unix ms); ranks candidates.
    pub activity: i64,
    /// True while the machine's agent is connected.
    pub live: bool,
    pub value: T,
}

/// Picks among `candidates`.
///
/// Hostnames compare ASCII case-insensitively (as DNS does). With
/// `partial` a candidate matches when `query` is a substring of its
/// hostname, but an exact match, if there is one, wins over substrings.
///
/// Each candidate is a distinct machine, and a machine does not get
/// another one's name by reporting it: two *connected* machines sharing a
/// hostname are ambiguous, never a silent pick of the newest. Among
/// machines sharing a hostname of which at most one is connected, the
/// connected one (else the most recently active one) is chosen: that is
/// how a re-enrolled machine replaces its old identity.
pub fn match_hostname<T>(
    query: &str,
    partial: bool,
    candidates: Vec<Candidate<T>>,
) -> HostnameMatch<T> {
    let query = query.trim().to_ascii_lowercase();
    if query.is_empty() {
        return HostnameMatch::None;
    }
    let (mut exact, mut substring): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .map(|c| Candidate {
            hostname: c.hostname.to_ascii_lowercase(),
            ..c
        })
        .filter(|c| c.hostname == query || (partial && c.hostname.contains(&query)))
        .partition(|c| c.hostname == query);
    let mut chosen = if exact.is_empty() {
        std::mem::take(&mut substring)
    } else {
        std::mem::take(&mut exact)
    };
    if chosen.is_empty() {
        return HostnameMatch::None;
    }
    // Connected first, then most recently active.
    chosen.sort_by_key(|c| (std::cmp::Reverse(c.live), std::cmp::Reverse(c.activity)));
    let first_host = chosen[0].hostname.clone();
    let one_hostname = chosen.iter().all(|c| c.hostname == first_host);
    let live = chosen.iter().filter(|c| c.live).count();
    if one_hostname && live <= 1 {
        HostnameMatch::One(chosen.swap_remove(0).value)
    } else {
        HostnameMatch::Ambiguous(chosen.into_iter().map(|c| c.value).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[(&str, i64)]) -> Vec<Candidate<String>> {
        list.iter()
            .map(|(h, t)| Candidate {
                hostname: h.to_string(),
                activity: *t,
                live: false,
                value: format!("{h}@{t}"),
            })
            .collect()
    }

    fn live(mut c: Vec<Candidate<String>>) -> Vec<Candidate<String>> {
        for x in &mut c {
            x.live = true;
        }
        c
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
    fn two_connected_machines_with_one_hostname_are_ambiguous() {
        let c = live(hosts(&[("web", 1), ("WEB", 7)]));
        assert_eq!(
            match_hostname("web", false, c),
            HostnameMatch::Ambiguous(vec!["WEB@7".to_string(), "web@1".to_string()])
        );
    }

    #[test]
    fn the_connected_machine_wins_over_offline_ones_of_the_same_name() {
        let mut c = hosts(&[("web", 1), ("web", 7)]);
        c[0].live = true;
        assert_eq!(
            match_hostname("web", false, c),
            HostnameMatch::One("web@1".into())
        );
    }

    #[test]
    fn same_hostname_offline_picks_most_recent() {
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
