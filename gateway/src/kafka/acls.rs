//! DescribeAcls, CreateAcls and DeleteAcls: a tenant's per-key bindings
//! (`floe_tenants::acl`), kept in the registry. Only a login no binding
//! restricts may use them (CLUSTER_AUTHORIZATION_FAILED otherwise, as a
//! Kafka principal without ALTER or DESCRIBE on the cluster gets). Floe
//! binds TOPIC and GROUP resources to `User:{key}` principals from any
//! host; anything else is refused with INVALID_REQUEST, saying so.

use floe_tenants::acl::{Acl, AclFilter, Operation, Pattern, PatternFilter, Resource};
use floe_tenants::RegistryError;
use floe_worker::Shards;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

use crate::Cx;

const ANY: i8 = 1;
const MATCH: i8 = 2;
const LITERAL: i8 = 3;
const PREFIXED: i8 = 4;
const DENY: i8 = 2;
const ALLOW: i8 = 3;

fn resource_code(r: Resource) -> i8 {
    match r {
        Resource::Topic => 2,
        Resource::Group => 3,
    }
}

fn resource(code: i8) -> Result<Resource, String> {
    match code {
        2 => Ok(Resource::Topic),
        3 => Ok(Resource::Group),
        c => Err(format!("resource type {c}: Floe has TOPIC and GROUP ACLs")),
    }
}

fn pattern_code(p: Pattern) -> i8 {
    match p {
        Pattern::Literal => LITERAL,
        Pattern::Prefixed => PREFIXED,
    }
}

fn principal_ok(p: &str) -> Result<(), String> {
    match p.strip_prefix("User:") {
        Some(k) if !k.is_empty() && k != "*" => Ok(()),
        _ => Err(format!(
            "principal {p:?}: Floe binds User:{{key}} principals"
        )),
    }
}

/// A binding from a CreateAcls creation.
fn binding(
    resource_type: i8,
    name: &str,
    pattern: i8,
    principal: &str,
    host: &str,
    operation: i8,
    permission: i8,
) -> Result<Acl, String> {
    let resource = resource(resource_type)?;
    let pattern = match pattern {
        LITERAL => Pattern::Literal,
        PREFIXED => Pattern::Prefixed,
        p => return Err(format!("pattern type {p}: LITERAL or PREFIXED")),
    };
    if name.is_empty() {
        return Err("an empty resource name".into());
    }
    principal_ok(principal)?;
    if host != "*" {
        return Err(format!("host {host:?}: Floe binds from any host (*)"));
    }
    let operation =
        Operation::from_code(operation).ok_or_else(|| format!("operation {operation}"))?;
    let allow = match permission {
        ALLOW => true,
        DENY => false,
        p => return Err(format!("permission type {p}: ALLOW or DENY")),
    };
    Ok(Acl {
        resource,
        pattern,
        name: name.to_string(),
        principal: principal.to_string(),
        operation,
        allow,
    })
}

/// A Describe/DeleteAcls filter (ANY matches anything).
fn filter(
    resource_type: i8,
    name: Option<&str>,
    pattern: i8,
    principal: Option<&str>,
    host: Option<&str>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, String> {
    let resource = match resource_type {
        ANY => None,
        c => Some(resource(c)?),
    };
    let pattern = match pattern {
        ANY => PatternFilter::Any,
        MATCH => PatternFilter::Match,
        LITERAL => PatternFilter::Exactly(Pattern::Literal),
        PREFIXED => PatternFilter::Exactly(Pattern::Prefixed),
        p => return Err(format!("pattern type {p}")),
    };
    if host.is_some_and(|h| h != "*") {
        return Err("Floe binds from any host (*) only".into());
    }
    let operation = match operation {
        ANY => None,
        o => Some(Operation::from_code(o).ok_or_else(|| format!("operation {o}"))?),
    };
    let allow = match permission {
        ANY => None,
        ALLOW => Some(true),
        DENY => Some(false),
        p => return Err(format!("permission type {p}")),
    };
    Ok(AclFilter {
        resource,
        name: name.map(str::to_string),
        pattern,
        principal: principal.map(str::to_string),
        operation,
        allow,
    })
}

fn denied() -> (i16, Option<StrBytes>) {
    (
        E::ClusterAuthorizationFailed.code(),
        Some(StrBytes::from_static_str(
            "ACLs restrict this key: only an unrestricted key manages ACLs",
        )),
    )
}

fn registry_failed(e: RegistryError) -> (i16, Option<StrBytes>) {
    let code = match e {
        RegistryError::Invalid(_) => E::InvalidRequest,
        // The open default tenant has no keys to restrict.
        RegistryError::NotFound(_) => E::SecurityDisabled,
        _ => E::KafkaStorageError,
    };
    (code.code(), Some(e.to_string().into()))
}

pub async fn describe<W: Shards>(cx: &Cx<W>, r: DescribeAclsRequest) -> DescribeAclsResponse {
    let fail = |(code, msg): (i16, Option<StrBytes>)| {
        DescribeAclsResponse::default()
            .with_error_code(code)
            .with_error_message(msg)
    };
    if !cx.worker.unrestricted() {
        return fail(denied());
    }
    let f = filter(
        r.resource_type_filter,
        r.resource_name_filter.as_deref(),
        r.pattern_type_filter,
        r.principal_filter.as_deref(),
        r.host_filter.as_deref(),
        r.operation,
        r.permission_type,
    );
    let f = match f {
        Ok(f) => f,
        Err(m) => return fail((E::InvalidRequest.code(), Some(m.into()))),
    };
    // Grouped by resource, as Kafka answers.
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    for a in cx
        .registry
        .acls(cx.tenant.as_str())
        .iter()
        .filter(|a| f.matches(a))
    {
        let d = AclDescription::default()
            .with_principal(a.principal.clone().into())
            .with_host(StrBytes::from_static_str("*"))
            .with_operation(a.operation.code())
            .with_permission_type(if a.allow { ALLOW } else { DENY });
        let (rt, pt) = (resource_code(a.resource), pattern_code(a.pattern));
        match resources
            .iter_mut()
            .find(|x| x.resource_type == rt && x.pattern_type == pt && *x.resource_name == a.name)
        {
            Some(x) => x.acls.push(d),
            None => resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(rt)
                    .with_resource_name(a.name.clone().into())
                    .with_pattern_type(pt)
                    .with_acls(vec![d]),
            ),
        }
    }
    DescribeAclsResponse::default().with_resources(resources)
}

pub async fn create<W: Shards>(cx: &Cx<W>, r: CreateAclsRequest) -> CreateAclsResponse {
    let result = |(code, msg): (i16, Option<StrBytes>)| {
        AclCreationResult::default()
            .with_error_code(code)
            .with_error_message(msg)
    };
    if !cx.worker.unrestricted() {
        let results = r.creations.iter().map(|_| result(denied())).collect();
        return CreateAclsResponse::default().with_results(results);
    }
    let parsed: Vec<Result<Acl, String>> = r
        .creations
        .iter()
        .map(|c| {
            binding(
                c.resource_type,
                &c.resource_name,
                c.resource_pattern_type,
                &c.principal,
                &c.host,
                c.operation,
                c.permission_type,
            )
        })
        .collect();
    let valid: Vec<Acl> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .cloned()
        .collect();
    let stored = if valid.is_empty() {
        Ok(())
    } else {
        cx.registry.create_acls(cx.tenant.as_str(), valid).await
    };
    let stored = stored.map_err(registry_failed);
    let results = parsed
        .into_iter()
        .map(|p| match (p, &stored) {
            (Err(m), _) => result((E::InvalidRequest.code(), Some(m.into()))),
            (Ok(_), Err(e)) => result(e.clone()),
            (Ok(_), Ok(())) => AclCreationResult::default(),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

pub async fn delete<W: Shards>(cx: &Cx<W>, r: DeleteAclsRequest) -> DeleteAclsResponse {
    let failed = |(code, msg): (i16, Option<StrBytes>)| {
        DeleteAclsFilterResult::default()
            .with_error_code(code)
            .with_error_message(msg)
    };
    if !cx.worker.unrestricted() {
        let results = r.filters.iter().map(|_| failed(denied())).collect();
        return DeleteAclsResponse::default().with_filter_results(results);
    }
    let parsed: Vec<Result<AclFilter, String>> = r
        .filters
        .iter()
        .map(|f| {
            filter(
                f.resource_type_filter,
                f.resource_name_filter.as_deref(),
                f.pattern_type_filter,
                f.principal_filter.as_deref(),
                f.host_filter.as_deref(),
                f.operation,
                f.permission_type,
            )
        })
        .collect();
    let valid: Vec<AclFilter> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .cloned()
        .collect();
    let removed = cx.registry.delete_acls(cx.tenant.as_str(), &valid).await;
    let mut removed = match removed {
        Ok(r) => r.into_iter(),
        Err(e) => {
            let e = registry_failed(e);
            let results = r.filters.iter().map(|_| failed(e.clone())).collect();
            return DeleteAclsResponse::default().with_filter_results(results);
        }
    };
    let results = parsed
        .into_iter()
        .map(|p| match p {
            Err(m) => failed((E::InvalidRequest.code(), Some(m.into()))),
            Ok(_) => {
                let matching = removed
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(resource_code(a.resource))
                            .with_resource_name(a.name.into())
                            .with_pattern_type(pattern_code(a.pattern))
                            .with_principal(a.principal.into())
                            .with_host(StrBytes::from_static_str("*"))
                            .with_operation(a.operation.code())
                            .with_permission_type(if a.allow { ALLOW } else { DENY })
                    })
                    .collect();
                DeleteAclsFilterResult::default().with_matching_acls(matching)
            }
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
