//! Approximate location from an IP address, for sessions and sign-in alerts: an offline
//! MaxMind-format database whose path the operator configures (DB-IP City Lite, CC BY 4.0, is
//! one; GeoLite2 another). Without one, every place is unknown, and the mail says so.

use std::net::IpAddr;
use std::path::Path;

/// Finds the approximate place of an address.
pub trait Locator: Send + Sync {
    /// "City, Country", "Country", or `None` when unknown.
    fn locate(&self, ip: IpAddr) -> Option<String>;
    /// Credit the data's licence asks for, if any (shown in mails).
    fn attribution(&self) -> Option<&str>;
}

/// No database: nothing is known.
#[derive(Debug, Default)]
pub struct NoLocator;

impl Locator for NoLocator {
    fn locate(&self, _ip: IpAddr) -> Option<String> {
        None
    }

    fn attribution(&self) -> Option<&str> {
        None
    }
}

/// A MaxMind-format (`.mmdb`) city database, read into memory once.
pub struct MaxMindLocator {
    reader: maxminddb::Reader<Vec<u8>>,
    attribution: Option<String>,
}

impl std::fmt::Debug for MaxMindLocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaxMindLocator")
            .field("type", &self.reader.metadata.database_type)
            .finish()
    }
}

impl MaxMindLocator {
    /// Opens the database at `path`.
    ///
    /// # Errors
    /// When the file cannot be read or is not a MaxMind database.
    pub fn open(path: &Path) -> Result<Self, String> {
        let reader = maxminddb::Reader::open_readfile(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // DB-IP's free databases ask for this credit (CC BY 4.0).
        let attribution = reader
            .metadata
            .database_type
            .to_ascii_lowercase()
            .starts_with("dbip")
            .then(|| "IP Geolocation by DB-IP (https://db-ip.com)".to_owned());
        Ok(Self { reader, attribution })
    }
}

impl Locator for MaxMindLocator {
    fn locate(&self, ip: IpAddr) -> Option<String> {
        let city: maxminddb::geoip2::City<'_> = self.reader.lookup(ip).ok().flatten()?;
        let english = |names: Option<&std::collections::BTreeMap<&str, &str>>| {
            names.and_then(|n| n.get("en")).map(|s| (*s).to_owned())
        };
        let town = city.city.as_ref().and_then(|c| english(c.names.as_ref()));
        let country = city.country.as_ref().and_then(|c| english(c.names.as_ref()));
        match (town, country) {
            (Some(town), Some(country)) => Some(format!("{town}, {country}")),
            (None, Some(country)) => Some(country),
            (Some(town), None) => Some(town),
            (None, None) => None,
        }
    }

    fn attribution(&self) -> Option<&str> {
        self.attribution.as_deref()
    }
}
