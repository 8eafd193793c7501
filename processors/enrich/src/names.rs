//! First and last name from a full name.
//!
//! `Last, First` is read as such. Otherwise the first word is the first name and everything
//! after it the last name, the way CRMs split a single name field: multi-part surnames stay
//! together (`Ludwig van Beethoven`, `Gabriel García Márquez`, `Sarah Jessica Parker` ->
//! `Sarah` / `Jessica Parker`; a middle name ends up in the last name rather than being lost).
//! Leading titles (`Dr.`, `Ms`) and trailing suffixes (`Jr.`, `PhD`) are dropped. Case is kept
//! as written.

const TITLES: &[&str] = &[
    "mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "dame", "rev", "fr",
];
const SUFFIXES: &[&str] = &["jr", "sr", "ii", "iii", "iv", "phd", "md", "esq", "mba", "dds", "cpa"];

/// Whitespace collapsed to single spaces.
pub(crate) fn clean(name: &str) -> String {
    name.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `(first, last)`; both `None` for something that is not a name (empty, an e-mail address).
pub(crate) fn split_full_name(raw: &str) -> (Option<String>, Option<String>) {
    let name = clean(raw);
    if name.is_empty() || name.contains('@') {
        return (None, None);
    }
    if let Some((before, after)) = name.split_once(',') {
        let given = strip(words(after), true);
        // `King, Jr.` is a suffix, not `Last, First`.
        if !given.is_empty() {
            let family = strip(words(before), false);
            return (join(&given), join(&family));
        }
        return split_words(strip(words(before), true));
    }
    split_words(strip(words(&name), true))
}

fn split_words(words: Vec<&str>) -> (Option<String>, Option<String>) {
    match words.split_first() {
        None => (None, None),
        Some((first, rest)) => (Some((*first).to_owned()), join(rest)),
    }
}

fn words(text: &str) -> Vec<&str> {
    text.split([' ', ','])
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect()
}

/// Drops trailing suffixes and, with `titles`, leading titles; never the last word left.
fn strip(mut words: Vec<&str>, titles: bool) -> Vec<&str> {
    while words.len() > 1 && is_one_of(words[words.len() - 1], SUFFIXES) {
        words.pop();
    }
    if words.len() == 1 && is_one_of(words[0], SUFFIXES) {
        words.clear();
    }
    if titles {
        while words.len() > 1 && is_one_of(words[0], TITLES) {
            words.remove(0);
        }
    }
    words
}

fn is_one_of(word: &str, list: &[&str]) -> bool {
    let word = word.trim_end_matches('.').replace('.', "").to_lowercase();
    list.contains(&word.as_str())
}

fn join(words: &[&str]) -> Option<String> {
    (!words.is_empty()).then(|| words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(name: &str) -> (Option<&'static str>, Option<&'static str>) {
        let (first, last) = split_full_name(name);
        (first.map(|s| &*s.leak()), last.map(|s| &*s.leak()))
    }

    #[test]
    fn first_and_last() {
        assert_eq!(split("Ada Lovelace"), (Some("Ada"), Some("Lovelace")));
        assert_eq!(split("  Ada   Lovelace "), (Some("Ada"), Some("Lovelace")));
        assert_eq!(split("grace hopper"), (Some("grace"), Some("hopper")));
    }

    #[test]
    fn last_comma_first() {
        assert_eq!(split("Lovelace, Ada"), (Some("Ada"), Some("Lovelace")));
        assert_eq!(split("Lovelace,Ada"), (Some("Ada"), Some("Lovelace")));
        assert_eq!(split("van Beethoven, Ludwig"), (Some("Ludwig"), Some("van Beethoven")));
        assert_eq!(split("Hopper, Dr. Grace"), (Some("Grace"), Some("Hopper")));
    }

    #[test]
    fn single_word_is_a_first_name() {
        assert_eq!(split("Cher"), (Some("Cher"), None));
        assert_eq!(split("Dr. Who"), (Some("Who"), None));
    }

    #[test]
    fn multi_part_surnames_stay_together() {
        assert_eq!(split("Ludwig van Beethoven"), (Some("Ludwig"), Some("van Beethoven")));
        assert_eq!(
            split("Gabriel García Márquez"),
            (Some("Gabriel"), Some("García Márquez"))
        );
        assert_eq!(split("Juan de la Cruz"), (Some("Juan"), Some("de la Cruz")));
        assert_eq!(split("Andrew Lloyd Webber"), (Some("Andrew"), Some("Lloyd Webber")));
        assert_eq!(split("Mary Smith-Jones"), (Some("Mary"), Some("Smith-Jones")));
    }

    #[test]
    fn titles_and_suffixes_are_dropped() {
        assert_eq!(split("Dr. Grace Hopper"), (Some("Grace"), Some("Hopper")));
        assert_eq!(split("Ms Ada Lovelace PhD"), (Some("Ada"), Some("Lovelace")));
        assert_eq!(split("Martin Luther King, Jr."), (Some("Martin"), Some("Luther King")));
        assert_eq!(split("Sammy Davis Jr"), (Some("Sammy"), Some("Davis")));
    }

    #[test]
    fn not_names() {
        assert_eq!(split(""), (None, None));
        assert_eq!(split("   "), (None, None));
        assert_eq!(split("ada@acme.com"), (None, None));
        assert_eq!(split(","), (None, None));
    }
}
