//! The name of a driver entry point, as every call record carries it.

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Names made static, at most: more distinct names than any driver exports.
const STATIC_NAMES: usize = 1024;

/// The names made static so far, each once for the life of the process.
static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);

/// The name of a driver entry point (`cuMemAlloc_v2`). A trace names a handful of them
/// millions of times: the first [`STATIC_NAMES`] distinct names a process meets are kept
/// once, for its life, and every record refers to its name with no reference count to move
/// (two atomic operations per record and per live allocation, and a count that the reading
/// and the applying threads would bounce between them). Past that, a name is shared by
/// reference count.
#[derive(Clone)]
pub struct ApiName(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl ApiName {
    /// The name `name`.
    pub fn new(name: &str) -> ApiName {
        let mut names = NAMES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let names = names.get_or_insert_with(HashSet::new);
        if let Some(&known) = names.get(name) {
            return ApiName(Repr::Static(known));
        }
        if names.len() < STATIC_NAMES {
            let kept: &'static str = Box::leak(name.into());
            names.insert(kept);
            return ApiName(Repr::Static(kept));
        }
        ApiName(Repr::Shared(name.into()))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }
}

impl Default for ApiName {
    fn default() -> Self {
        ApiName(Repr::Static(""))
    }
}

impl Deref for ApiName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ApiName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for ApiName {
    fn from(name: &str) -> Self {
        ApiName::new(name)
    }
}

impl From<String> for ApiName {
    fn from(name: String) -> Self {
        ApiName::new(&name)
    }
}

impl PartialEq for ApiName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ApiName {}

impl PartialEq<str> for ApiName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ApiName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for ApiName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ApiName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for ApiName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for ApiName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ApiName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for ApiName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ApiName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(ApiName::new(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_kept_once_and_compares_as_its_text() {
        let a = ApiName::new("cuMemAlloc_v2");
        let b: ApiName = String::from("cuMemAlloc_v2").into();
        let (Repr::Static(x), Repr::Static(y)) = (&a.0, &b.0) else {
            panic!("a driver's names are kept static");
        };
        assert!(std::ptr::eq(*x, *y), "kept once");
        assert_eq!(a, b);
        assert_eq!(a, "cuMemAlloc_v2");
        assert!(a.starts_with("cuMemAlloc"));
        assert_eq!(format!("{a} {a:?}"), "cuMemAlloc_v2 \"cuMemAlloc_v2\"");
        assert!(ApiName::new("cuMemFree_v2") > a);
        assert_eq!(ApiName::default(), "");
    }

    #[test]
    fn it_reads_and_writes_as_a_json_string() {
        let a = ApiName::new("cuMemFreeAsync");
        let json = serde_json::to_string(&a).expect("serialize");
        assert_eq!(json, "\"cuMemFreeAsync\"");
        let back: ApiName = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, a);
        let escaped: ApiName = serde_json::from_str("\"cu\\u004demAlloc\"").expect("escaped");
        assert_eq!(escaped, "cuMemAlloc");
    }

    #[test]
    fn past_the_bound_names_are_shared_not_kept() {
        // Enough distinct names to pass the bound whatever other tests kept.
        let names: Vec<ApiName> = (0..STATIC_NAMES + 8)
            .map(|i| ApiName::new(&format!("cuNameOfTest{i}")))
            .collect();
        assert!(names.iter().any(|n| matches!(n.0, Repr::Shared(_))));
        for (i, n) in names.iter().enumerate() {
            assert_eq!(n.as_str(), format!("cuNameOfTest{i}"));
        }
    }
}
