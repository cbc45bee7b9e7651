//! Tencent Cloud Chat's regions and their REST hosts.
//!
//! Each region has a primary host and, for most, a backup host to use when the primary's DNS
//! is hijacked or unreachable.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    China,
    Singapore,
    Seoul,
    Tokyo,
    Frankfurt,
    Mumbai,
    SiliconValley,
    Jakarta,
    Riyadh,
}

impl Region {
    pub const ALL: [Region; 9] = [
        Region::China,
        Region::Singapore,
        Region::Seoul,
        Region::Tokyo,
        Region::Frankfurt,
        Region::Mumbai,
        Region::SiliconValley,
        Region::Jakarta,
        Region::Riyadh,
    ];

    /// The name used in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            Region::China => "china",
            Region::Singapore => "singapore",
            Region::Seoul => "seoul",
            Region::Tokyo => "tokyo",
            Region::Frankfurt => "frankfurt",
            Region::Mumbai => "mumbai",
            Region::SiliconValley => "silicon-valley",
            Region::Jakarta => "jakarta",
            Region::Riyadh => "riyadh",
        }
    }

    pub fn primary_host(self) -> &'static str {
        match self {
            Region::China => "console.tim.qq.com",
            Region::Singapore => "adminapisgp.im.qcloud.com",
            Region::Seoul => "adminapikr.im.qcloud.com",
            Region::Tokyo => "adminapijpn.im.qcloud.com",
            Region::Frankfurt => "adminapiger.im.qcloud.com",
            Region::Mumbai => "adminapiind.im.qcloud.com",
            Region::SiliconValley => "adminapiusa.im.qcloud.com",
            Region::Jakarta => "adminapiidn.im.qcloud.com",
            Region::Riyadh => "adminapiksa.im.qcloud.com",
        }
    }

    /// Riyadh has no documented backup host.
    pub fn backup_host(self) -> Option<&'static str> {
        match self {
            Region::China => Some("adminapi.my-imcloud.com"),
            Region::Singapore => Some("adminapisgp.my-imcloud.com"),
            Region::Seoul => Some("adminapikr.my-imcloud.com"),
            Region::Tokyo => Some("adminapijpn.my-imcloud.com"),
            Region::Frankfurt => Some("adminapiger.my-imcloud.com"),
            Region::Mumbai => Some("adminapiind.my-imcloud.com"),
            Region::SiliconValley => Some("adminapiusa.my-imcloud.com"),
            Region::Jakarta => Some("adminapiidn.my-imcloud.com"),
            Region::Riyadh => None,
        }
    }

    /// `https://{primary}` as an endpoint base.
    pub fn primary_endpoint(self) -> String {
        format!("https://{}", self.primary_host())
    }

    pub fn backup_endpoint(self) -> Option<String> {
        self.backup_host().map(|h| format!("https://{h}"))
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown region; expected one of china, singapore, seoul, tokyo, frankfurt, mumbai, silicon-valley, jakarta, riyadh")]
pub struct UnknownRegion;

impl FromStr for Region {
    type Err = UnknownRegion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Region::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or(UnknownRegion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nine_regions_parse_by_name() {
        for region in Region::ALL {
            assert_eq!(region.name().parse::<Region>(), Ok(region));
        }
        assert!("Singapore".parse::<Region>().is_err());
        assert!("mars".parse::<Region>().is_err());
    }

    #[test]
    fn hosts_as_documented() {
        assert_eq!(
            Region::Singapore.primary_endpoint(),
            "https://adminapisgp.im.qcloud.com"
        );
        assert_eq!(
            Region::China.backup_endpoint().as_deref(),
            Some("https://adminapi.my-imcloud.com")
        );
        assert_eq!(Region::Riyadh.backup_host(), None);
        // Every backup differs from its primary.
        for region in Region::ALL {
            assert_ne!(Some(region.primary_host()), region.backup_host());
        }
    }
}
