//! Feeds arbitrary UTF-8 to the selector parser: it must never panic, and
//! every selector it accepts must print (canonically) as text that parses
//! back to an equal selector and prints the same again. Host lists and
//! hostname globs get the same input, for panics only.

#![no_main]

use cmdop_proto::selector::{hostname_matches, parse_host_list, Selector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(selector) = Selector::parse(input) {
        let shown = selector.to_string();
        let again = match Selector::parse(&shown) {
            Ok(again) => again,
            Err(e) => panic!("{input:?} printed as {shown:?}, which is refused: {e}"),
        };
        assert_eq!(again, selector, "{input:?} printed as {shown:?}");
        assert_eq!(
            again.to_string(),
            shown,
            "canonical form of {input:?} is not stable"
        );
        let _ = selector.matches(|key| (key.len() % 2 == 0).then_some("v"));
    }
    if let Ok(hosts) = parse_host_list(input) {
        for pattern in &hosts {
            let _ = hostname_matches(pattern, input);
        }
    }
});
