//! Per-key ACLs within a tenant, with Kafka's semantics where they apply.
//!
//! A binding allows or denies one principal (`User:{key}`) an operation on
//! the topics or groups a literal name or a prefix names. A key no binding
//! names is unrestricted (the tenant's own admin keys); a key some binding
//! names may do only what its bindings allow, and a deny wins over any
//! allow. Only an unrestricted login may read or change the bindings
//! (Kafka asks for ALTER or DESCRIBE on the cluster).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Topic,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    Literal,
    Prefixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
}

impl Operation {
    /// Whether a binding for `self` covers `op`: ALL covers everything,
    /// and, as in Kafka, READ, WRITE, DELETE and ALTER imply DESCRIBE, and
    /// ALTER_CONFIGS implies DESCRIBE_CONFIGS.
    fn covers(self, op: Operation) -> bool {
        use Operation::*;
        self == op
            || self == All
            || (op == Describe && matches!(self, Read | Write | Delete | Alter))
            || (op == DescribeConfigs && self == AlterConfigs)
    }

    /// Kafka's `AclOperation` code.
    pub fn code(self) -> i8 {
        use Operation::*;
        match self {
            All => 2,
            Read => 3,
            Write => 4,
            Create => 5,
            Delete => 6,
            Alter => 7,
            Describe => 8,
            DescribeConfigs => 10,
            AlterConfigs => 11,
        }
    }

    pub fn from_code(c: i8) -> Option<Self> {
        use Operation::*;
        Some(match c {
            2 => All,
            3 => Read,
            4 => Write,
            5 => Create,
            6 => Delete,
            7 => Alter,
            8 => Describe,
            10 => DescribeConfigs,
            11 => AlterConfigs,
            _ => return None,
        })
    }
}

/// One binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    pub resource: Resource,
    pub pattern: Pattern,
    pub name: String,
    /// `User:{key}`.
    pub principal: String,
    pub operation: Operation,
    pub allow: bool,
}

impl Acl {
    fn names(&self, resource: Resource, name: &str) -> bool {
        self.resource == resource
            && match self.pattern {
                Pattern::Literal => self.name == name || self.name == "*",
                Pattern::Prefixed => name.starts_with(&self.name),
            }
    }
}

/// The principal of a key's login.
pub fn principal(key: &str) -> String {
    format!("User:{key}")
}

/// Whether the bindings restricting a key (all naming it) let it do `op`
/// on `resource` `name`.
pub fn allowed(bindings: &[Acl], resource: Resource, name: &str, op: Operation) -> bool {
    let mut allow = false;
    for b in bindings
        .iter()
        .filter(|b| b.names(resource, name) && b.operation.covers(op))
    {
        if !b.allow {
            return false;
        }
        allow = true;
    }
    allow
}

/// Which bindings a DescribeAcls or DeleteAcls filter matches; `None`
/// fields match anything (Kafka's ANY).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFilter {
    pub resource: Option<Resource>,
    pub name: Option<String>,
    pub pattern: PatternFilter,
    pub principal: Option<String>,
    pub operation: Option<Operation>,
    pub allow: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PatternFilter {
    #[default]
    Any,
    /// Kafka's MATCH: bindings that would apply to the named resource
    /// (literal of the name, the wildcard, or a prefix of it).
    Match,
    Exactly(Pattern),
}

impl AclFilter {
    pub fn matches(&self, b: &Acl) -> bool {
        let name_ok = match (self.pattern, &self.name) {
            (PatternFilter::Match, Some(n)) => match b.pattern {
                Pattern::Literal => &b.name == n || b.name == "*",
                Pattern::Prefixed => n.starts_with(&b.name),
            },
            (PatternFilter::Exactly(p), n) => {
                p == b.pattern && n.as_ref().is_none_or(|n| *n == b.name)
            }
            (_, n) => n.as_ref().is_none_or(|n| *n == b.name),
        };
        name_ok
            && self.resource.is_none_or(|r| r == b.resource)
            && self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.operation.is_none_or(|o| o == b.operation)
            && self.allow.is_none_or(|a| a == b.allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(resource: Resource, pattern: Pattern, name: &str, op: Operation, allow: bool) -> Acl {
        Acl {
            resource,
            pattern,
            name: name.into(),
            principal: principal("fk_a"),
            operation: op,
            allow,
        }
    }

    #[test]
    fn allows_what_bindings_grant_and_a_deny_wins() {
        use Operation::*;
        use Pattern::*;
        use Resource::*;
        let b = vec![
            acl(Topic, Prefixed, "orders-", Read, true),
            acl(Topic, Literal, "orders-secret", All, false),
            acl(Group, Literal, "*", Read, true),
            acl(Topic, Literal, "audit", AlterConfigs, true),
        ];
        assert!(allowed(&b, Topic, "orders-eu", Read));
        assert!(
            allowed(&b, Topic, "orders-eu", Describe),
            "READ implies DESCRIBE"
        );
        assert!(!allowed(&b, Topic, "orders-eu", Write));
        assert!(!allowed(&b, Topic, "orders-secret", Read), "deny wins");
        assert!(!allowed(&b, Topic, "invoices", Read), "nothing granted");
        assert!(allowed(&b, Group, "any-group", Read));
        assert!(!allowed(&b, Group, "any-group", Delete));
        assert!(allowed(&b, Topic, "audit", DescribeConfigs));
        assert!(!allowed(&b, Topic, "audit", Describe));
    }

    #[test]
    fn filters_match_as_kafkas_do() {
        use Pattern::*;
        use Resource::*;
        let lit = acl(Topic, Literal, "orders", Operation::Read, true);
        let pre = acl(Topic, Prefixed, "ord", Operation::Read, true);
        let m = AclFilter {
            name: Some("orders".into()),
            pattern: PatternFilter::Match,
            ..AclFilter::default()
        };
        assert!(m.matches(&lit) && m.matches(&pre));
        let exact = AclFilter {
            name: Some("ord".into()),
            pattern: PatternFilter::Exactly(Prefixed),
            ..AclFilter::default()
        };
        assert!(!exact.matches(&lit) && exact.matches(&pre));
        let groups = AclFilter {
            resource: Some(Group),
            ..AclFilter::default()
        };
        assert!(!groups.matches(&lit));
        assert!(AclFilter::default().matches(&lit));
    }
}
