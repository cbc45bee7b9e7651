//! Which budget a GroupId or an API takes: the table naming the GroupId exactly, else the
//! longest matching prefix, else the defaults; an API's own table, else the app defaults.
//!
//! A lookup costs the same whatever the number of entries: one hash lookup for the exact ids,
//! and for the prefixes one pass over the GroupId that hashes all its heads at once (FNV-1a is
//! computed byte by byte, so the hash of each head is a step of the next), then one probe per
//! distinct prefix length (at most 48, GroupIds being at most 48 bytes), longest first. Each
//! distinct budget is one quota, by index, so a limiter keeps one bucket set per quota rather
//! than one per table.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::config::{GroupMatch, RateLimitConfig};

/// The longest prefix that can match: GroupIds are at most 48 bytes.
const MAX_PREFIX: usize = 48;

/// A set of bytes.
#[derive(Debug, Clone, Copy, Default)]
struct ByteSet([u64; 4]);

impl ByteSet {
    fn insert(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }

    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }
}

/// The first and the last bytes of the prefixes of one length.
#[derive(Debug, Clone, Copy, Default)]
struct ByteSet2 {
    first: ByteSet,
    last: ByteSet,
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv_step(hash: u64, byte: u8) -> u64 {
    (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_START, |h, &b| fnv_step(h, b))
}

/// The map of prefixes is keyed by their FNV-1a hash already: this only spreads its bits
/// (FNV's low bits, which pick the bucket, mix poorly).
#[derive(Default)]
struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        (self.0 ^ (self.0 >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = bytes.iter().fold(self.0, |h, &b| fnv_step(h, b));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Prefixes by the hash of their bytes; those sharing a hash are told apart by their bytes.
type ByHash = HashMap<u64, Vec<(Box<[u8]>, usize)>, BuildHasherDefault<Spread>>;

/// One budget: requests per second and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    pub per_second: u32,
    pub burst: u32,
}

/// The distinct budgets of one scope; index 0 is the default.
#[derive(Debug, Clone)]
struct Quotas {
    list: Vec<Limits>,
    index: HashMap<Limits, usize>,
}

impl Quotas {
    fn new(default: Limits) -> Self {
        Quotas {
            list: vec![default],
            index: HashMap::from([(default, 0)]),
        }
    }

    fn add(&mut self, limits: Limits) -> usize {
        let next = self.list.len();
        let at = *self.index.entry(limits).or_insert(next);
        if at == next {
            self.list.push(limits);
        }
        at
    }
}

/// The override tables of `[rate_limit]`, ready for lookups.
#[derive(Debug, Clone)]
pub struct Overrides {
    groups: Quotas,
    ids: HashMap<Box<str>, usize>,
    prefixes: ByHash,
    /// The distinct prefix lengths, longest first.
    lengths: Vec<usize>,
    /// Per prefix length, the first and last bytes of the prefixes of that length: a length
    /// whose bytes no prefix has is skipped without hashing.
    ends: Box<[ByteSet2; MAX_PREFIX + 1]>,
    apps: Quotas,
    apis: HashMap<Box<str>, usize>,
}

impl Overrides {
    pub fn new(config: &RateLimitConfig) -> Self {
        let mut groups = Quotas::new(Limits {
            per_second: config.group_per_second,
            burst: config.group_burst,
        });
        let mut ids: HashMap<Box<str>, usize> = HashMap::new();
        let mut prefixes: HashMap<Box<str>, usize> = HashMap::new();
        for table in &config.groups {
            let quota = groups.add(Limits {
                per_second: table.per_second,
                burst: table.burst,
            });
            match &table.matches {
                GroupMatch::Ids(list) => {
                    ids.extend(list.iter().map(|id| (id.as_str().into(), quota)));
                }
                GroupMatch::Prefix(prefix) => {
                    prefixes.insert(prefix.as_str().into(), quota);
                }
            }
        }
        let mut ends = Box::new([ByteSet2::default(); MAX_PREFIX + 1]);
        let mut lengths = Vec::new();
        for prefix in prefixes.keys().map(|p| p.as_bytes()) {
            let Some(end) = ends.get_mut(prefix.len()) else {
                continue; // longer than any GroupId: never matches
            };
            if let (Some(&first), Some(&last)) = (prefix.first(), prefix.last()) {
                end.first.insert(first);
                end.last.insert(last);
                lengths.push(prefix.len());
            }
        }
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        let mut by_hash = ByHash::default();
        for (prefix, quota) in prefixes {
            let bytes: Box<[u8]> = prefix.into_boxed_bytes();
            if bytes.len() <= MAX_PREFIX {
                by_hash.entry(fnv(&bytes)).or_default().push((bytes, quota));
            }
        }
        let mut apps = Quotas::new(Limits {
            per_second: config.app_per_second,
            burst: config.app_burst,
        });
        let apis = config
            .apis
            .iter()
            .map(|api| {
                let quota = apps.add(Limits {
                    per_second: api.per_second,
                    burst: api.burst,
                });
                (api.api.as_str().into(), quota)
            })
            .collect();
        Overrides {
            groups,
            ids,
            prefixes: by_hash,
            lengths,
            ends,
            apps,
            apis,
        }
    }

    /// The quota (an index into [`Overrides::group_quotas`]) of a GroupId.
    pub fn group(&self, id: &str) -> usize {
        if let Some(&quota) = self.ids.get(id) {
            return quota;
        }
        let Some(&longest) = self.lengths.first() else {
            return 0;
        };
        let bytes = id.as_bytes();
        let head = &bytes[..bytes.len().min(longest)];
        // hashes[n]: the hash of the first n bytes.
        let mut hashes = [FNV_START; MAX_PREFIX + 1];
        for (i, &b) in head.iter().enumerate() {
            hashes[i + 1] = fnv_step(hashes[i], b);
        }
        for &len in &self.lengths {
            let (Some(&first), Some(&last)) = (head.first(), head.get(len.wrapping_sub(1))) else {
                continue;
            };
            let end = &self.ends[len];
            if !end.first.contains(first) || !end.last.contains(last) {
                continue;
            }
            let found = self.prefixes.get(&hashes[len]).and_then(|same| {
                same.iter()
                    .find(|(prefix, _)| prefix[..] == head[..len])
                    .map(|&(_, quota)| quota)
            });
            if let Some(quota) = found {
                return quota;
            }
        }
        0
    }

    /// The quota (an index into [`Overrides::app_quotas`]) of an API, by its name.
    pub fn app(&self, api: &str) -> usize {
        self.apis.get(api).copied().unwrap_or(0)
    }

    /// The distinct group budgets; the default first.
    pub fn group_quotas(&self) -> &[Limits] {
        &self.groups.list
    }

    /// The distinct app budgets per API; the default first.
    pub fn app_quotas(&self) -> &[Limits] {
        &self.apps.list
    }

    /// The budgets of a GroupId.
    pub fn group_limits(&self, id: &str) -> Limits {
        self.groups.list[self.group(id)]
    }

    /// The app-wide budgets of an API.
    pub fn app_limits(&self, api: &str) -> Limits {
        self.apps.list[self.app(api)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiLimits, GroupLimits};

    fn limits(per_second: u32, burst: u32) -> Limits {
        Limits { per_second, burst }
    }

    fn table(matches: GroupMatch, per_second: u32, burst: u32) -> GroupLimits {
        GroupLimits {
            matches,
            per_second,
            burst,
        }
    }

    fn config() -> RateLimitConfig {
        RateLimitConfig {
            group_per_second: 20,
            group_burst: 40,
            groups: vec![
                table(
                    GroupMatch::Ids(vec!["load-vip".into(), "@TGS#a".into()]),
                    100,
                    200,
                ),
                table(GroupMatch::Prefix("load-".into()), 1, 1),
                table(GroupMatch::Prefix("load-big-".into()), 5, 6),
                table(GroupMatch::Prefix("l".into()), 7, 7),
                table(GroupMatch::Prefix("x".into()), 1, 1),
            ],
            apis: vec![ApiLimits {
                api: "openim/sendmsg".into(),
                per_second: 50,
                burst: 5,
            }],
            ..RateLimitConfig::default()
        }
    }

    #[test]
    fn exact_then_longest_prefix_then_default() {
        let o = Overrides::new(&config());
        assert_eq!(o.group_limits("@TGS#a"), limits(100, 200));
        assert_eq!(
            o.group_limits("load-vip"),
            limits(100, 200),
            "exact beats prefix"
        );
        assert_eq!(o.group_limits("load-vip2"), limits(1, 1));
        assert_eq!(o.group_limits("load-big-1"), limits(5, 6), "longest prefix");
        assert_eq!(o.group_limits("load-"), limits(1, 1));
        assert_eq!(o.group_limits("load"), limits(7, 7));
        assert_eq!(o.group_limits("@TGS#b"), limits(20, 40));
        assert_eq!(o.group_limits(""), limits(20, 40));
        assert_eq!(
            o.group_limits("é-load-"),
            limits(20, 40),
            "no panic off a char boundary"
        );
    }

    #[test]
    fn one_quota_per_distinct_budget() {
        let o = Overrides::new(&config());
        // Default, 100/200, 1/1 (twice), 5/6, 7/7.
        assert_eq!(o.group_quotas().len(), 5);
        assert_eq!(o.group("load-x"), o.group("xyz"));
        assert_eq!(o.group("other"), 0);
        assert_eq!(o.app_limits("openim/sendmsg"), limits(50, 5));
        assert_eq!(o.app_limits("openim/other"), limits(200, 20));
        assert_eq!(o.app_quotas().len(), 2);
    }

    #[test]
    fn no_tables_means_the_defaults() {
        let o = Overrides::new(&RateLimitConfig::default());
        assert_eq!(o.group_limits("anything"), limits(20, 40));
        assert_eq!(o.group_quotas(), &[limits(20, 40)]);
    }

    proptest::proptest! {
        /// The one-pass hashed lookup agrees with the plain rule: the longest prefix the
        /// GroupId starts with, else the default.
        #[test]
        fn prefix_lookup_is_the_longest_matching_prefix(
            prefixes in proptest::collection::btree_set("[ab]{1,6}", 0..12),
            id in "[ab]{0,8}",
        ) {
            let groups = prefixes
                .iter()
                .enumerate()
                .map(|(i, p)| table(GroupMatch::Prefix(p.clone()), 1 + i as u32, 1))
                .collect();
            let o = Overrides::new(&RateLimitConfig {
                group_per_second: 1000,
                group_burst: 1000,
                groups,
                ..RateLimitConfig::default()
            });
            let expected = prefixes
                .iter()
                .enumerate()
                .filter(|(_, p)| id.starts_with(p.as_str()))
                .max_by_key(|(_, p)| p.len())
                .map_or(1000, |(i, _)| 1 + i as u32);
            proptest::prop_assert_eq!(o.group_limits(&id).per_second, expected);
        }
    }
}
