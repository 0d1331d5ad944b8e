//! Aliases and domain aliases: addresses without a mailbox of their own.
//!
//! An [`Alias`] maps one address of a local domain (or `@domain`, the
//! domain's catch-all) to targets: users, other aliases or external
//! addresses. Users and aliases share one namespace. A domain alias makes
//! every `x@alias-domain` mean `x@target-domain`. The directory stores and
//! validates them (syntax, namespace, the target limit); what they resolve
//! to is decided by the core (`postoffice_core::addresses`).

use std::collections::btree_map::Entry;

use crate::address::{normalize_address, normalize_domain};
use crate::data::DirectoryData;
use crate::error::{Error, Result};

/// An alias: mail for `address` goes to every target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// Canonical `local@domain`, or `@domain` for the domain's catch-all.
    pub address: String,
    /// Canonical target addresses, in the order they were added.
    pub targets: Vec<String>,
    /// Whether the local users it delivers to may send as it (submission).
    pub send_as: bool,
}

impl Alias {
    /// The part after `@`.
    pub fn domain(&self) -> &str {
        self.address.rsplit_once('@').map_or("", |(_, d)| d)
    }

    /// Is this a domain's catch-all (`@domain`)?
    pub fn is_catch_all(&self) -> bool {
        self.address.starts_with('@')
    }
}

/// Canonical form of an alias address: `local@domain`, or `@domain` for a
/// catch-all.
pub fn normalize_alias_address(address: &str) -> Result<String> {
    match address.strip_prefix('@') {
        Some(domain) => Ok(format!("@{}", normalize_domain(domain)?)),
        None => normalize_address(address),
    }
}

/// What [`crate::Directory::add_alias`] is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct AliasChange<'a> {
    /// The alias address (`local@domain` or `@domain`).
    pub address: &'a str,
    /// Targets to add (existing ones are kept, duplicates ignored).
    pub targets: &'a [String],
    /// Set whether its users may send as it; `None` keeps the stored value
    /// (true for a new alias).
    pub send_as: Option<bool>,
    /// The most targets one alias may have.
    pub max_targets: usize,
}

impl DirectoryData {
    /// Looks an alias up by address (`local@domain` or `@domain`),
    /// case-insensitively.
    pub fn alias(&self, address: &str) -> Option<&Alias> {
        self.aliases
            .get(crate::address::lookup_key(address).as_ref())
    }

    /// The catch-all alias of `domain`, if it has one.
    pub fn catch_all(&self, domain: &str) -> Option<&Alias> {
        self.alias(&format!("@{domain}"))
    }

    /// All aliases, ordered by address.
    pub fn aliases(&self) -> impl Iterator<Item = &Alias> {
        self.aliases.values()
    }

    /// The real domain `name` is an alias of, if it is a domain alias.
    pub fn domain_alias(&self, name: &str) -> Option<&str> {
        self.domain_aliases
            .get(crate::address::lookup_key(name).as_ref())
            .map(String::as_str)
    }

    /// All domain aliases as (alias domain, real domain), ordered.
    pub fn domain_aliases(&self) -> impl Iterator<Item = (&str, &str)> {
        self.domain_aliases
            .iter()
            .map(|(a, t)| (a.as_str(), t.as_str()))
    }

    /// Is `name` a domain we receive mail for: a domain or a domain alias?
    pub fn is_local_domain(&self, name: &str) -> bool {
        self.domain(name).is_some() || self.domain_alias(name).is_some()
    }

    pub(crate) fn add_alias(&mut self, change: &AliasChange<'_>) -> Result<Alias> {
        let address = normalize_alias_address(change.address)?;
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d).to_owned();
        if self.domain_alias(&domain).is_some() {
            return Err(Error::InvalidAlias {
                alias: address,
                reason: format!(
                    "{domain} is a domain alias; add the alias in the domain it points to"
                ),
            });
        }
        if self.domain(&domain).is_none() {
            return Err(Error::DomainNotFound(domain));
        }
        if self.users.contains_key(&address) {
            return Err(Error::AddressIsUser(address));
        }
        let mut targets = Vec::with_capacity(change.targets.len());
        let mut seen = std::collections::HashSet::new();
        for t in change.targets {
            let t = normalize_address(t)?;
            if t == address {
                return Err(Error::InvalidAlias {
                    alias: address,
                    reason: "an alias cannot be its own target".into(),
                });
            }
            if seen.insert(t.clone()) {
                targets.push(t);
            }
        }
        if targets.is_empty() {
            return Err(Error::InvalidAlias {
                alias: address,
                reason: "give at least one target".into(),
            });
        }
        let alias = match self.aliases.entry(address.clone()) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(Alias {
                address: address.clone(),
                targets: Vec::new(),
                send_as: true,
            }),
        };
        let existing: std::collections::HashSet<String> = alias.targets.iter().cloned().collect();
        alias
            .targets
            .extend(targets.into_iter().filter(|t| !existing.contains(t)));
        if let Some(s) = change.send_as {
            alias.send_as = s;
        }
        if alias.targets.len() > change.max_targets {
            return Err(Error::TooManyTargets {
                alias: address,
                count: alias.targets.len(),
                max: change.max_targets,
            });
        }
        Ok(alias.clone())
    }

    /// Removes one target (the alias goes when it has none left) or the
    /// whole alias; returns what is left.
    pub(crate) fn remove_alias(
        &mut self,
        address: &str,
        target: Option<&str>,
    ) -> Result<Option<Alias>> {
        let address = normalize_alias_address(address)?;
        let Some(alias) = self.aliases.get_mut(&address) else {
            return Err(Error::AliasNotFound(address));
        };
        let Some(target) = target else {
            self.aliases.remove(&address);
            return Ok(None);
        };
        let target = normalize_address(target)?;
        let before = alias.targets.len();
        alias.targets.retain(|t| *t != target);
        if alias.targets.len() == before {
            return Err(Error::AliasTargetNotFound {
                alias: address,
                target,
            });
        }
        if alias.targets.is_empty() {
            self.aliases.remove(&address);
            return Ok(None);
        }
        Ok(Some(alias.clone()))
    }

    pub(crate) fn add_domain_alias(
        &mut self,
        name: &str,
        target: &str,
    ) -> Result<(String, String)> {
        let name = normalize_domain(name)?;
        let target = normalize_domain(target)?;
        if self.domains.contains_key(&name) {
            return Err(Error::DomainExists(name));
        }
        if self.domain_aliases.contains_key(&name) {
            return Err(Error::DomainIsAlias(name));
        }
        if self.domain_aliases.contains_key(&target) {
            return Err(Error::DomainIsAlias(target));
        }
        if !self.domains.contains_key(&target) {
            return Err(Error::DomainNotFound(target));
        }
        self.domain_aliases.insert(name.clone(), target.clone());
        Ok((name, target))
    }

    pub(crate) fn remove_domain_alias(&mut self, name: &str) -> Result<String> {
        let name = normalize_domain(name)?;
        match self.domain_aliases.remove(&name) {
            Some(_) => Ok(name),
            None => Err(Error::DomainAliasNotFound(name)),
        }
    }

    /// Aliases in `domain` plus domain aliases pointing at it.
    pub(crate) fn aliases_using_domain(&self, domain: &str) -> usize {
        self.aliases
            .values()
            .filter(|a| a.domain() == domain)
            .count()
            + self
                .domain_aliases
                .values()
                .filter(|t| *t == domain)
                .count()
    }
}
