//! The allocation list's filter: `api:NAME class:NAME min:SIZE`, and sizes as a person
//! writes them.

use crate::tui::class::ViewClass;

/// The allocation filter: `api:NAME class:NAME min:SIZE`, a bare word matching the API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub api: Option<String>,
    pub class: Option<String>,
    pub min_bytes: u64,
    /// As typed, for display.
    pub text: String,
}

impl Filter {
    /// Parses the filter line; an unreadable size is an error to show, not a filter.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut f = Filter {
            text: text.trim().to_string(),
            ..Filter::default()
        };
        for tok in text.split_whitespace() {
            match tok.split_once(':') {
                Some(("api", v)) => f.api = Some(v.to_ascii_lowercase()),
                Some(("class", v)) => {
                    let v = v.to_ascii_lowercase();
                    if !ViewClass::ALL.iter().any(|c| c.label().starts_with(&v)) || v.is_empty() {
                        let names: Vec<&str> = ViewClass::ALL.iter().map(|c| c.label()).collect();
                        return Err(format!("class:{v}: not a class ({})", names.join(", ")));
                    }
                    f.class = Some(v);
                }
                Some(("min", v)) => {
                    f.min_bytes =
                        parse_size(v).ok_or_else(|| format!("min:{v}: not a size (1M, 2G)"))?
                }
                Some((k, _)) => return Err(format!("{k}: unknown filter (api, class, min)")),
                None => f.api = Some(tok.to_ascii_lowercase()),
            }
        }
        Ok(f)
    }

    pub fn is_empty(&self) -> bool {
        self.api.is_none() && self.class.is_none() && self.min_bytes == 0
    }

    pub fn matches(&self, api: &str, class: ViewClass, bytes: u64) -> bool {
        bytes >= self.min_bytes
            && self
                .api
                .as_ref()
                .is_none_or(|a| api.to_ascii_lowercase().contains(a.as_str()))
            && self
                .class
                .as_ref()
                .is_none_or(|c| class.label().starts_with(c.as_str()))
    }
}

/// `1024`, `4K`, `1.5M`, `2G`, `1T` (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        (i, 't' | 'T') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_that_does_not_exist_is_refused_like_a_bad_size() {
        assert!(Filter::parse("class:kv").is_ok());
        assert!(Filter::parse("class:WEI").is_ok());
        let e = Filter::parse("class:bogus").expect_err("refused");
        assert_eq!(
            e,
            "class:bogus: not a class (weights, kv, dynamic, unknown, host)"
        );
        assert!(Filter::parse("class:").is_err());
        assert!(Filter::parse("min:abc").is_err());
    }
}
