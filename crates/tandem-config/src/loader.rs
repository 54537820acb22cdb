//! Reading `--resources-path` folders (§6.1): which files, which documents, which resources
//! apply to this app, and the checks that need all of them (duplicate names, policy references,
//! templates).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::Value;

use crate::de::get_field;
use crate::error::{ConfigError, FieldError};
use crate::resiliency::{self, KnownPolicies};
use crate::{LoadContext, Resources, Source, component, http_endpoint, subscription};

/// Splits a YAML text into its non-empty documents, numbered from 1 in file order.
pub(crate) fn split_documents(text: &str, file: &Path) -> Result<Vec<(usize, Value)>, ConfigError> {
    let mut documents = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let mut value =
            Value::deserialize(document).map_err(|e| ConfigError::yaml(file, index, &e))?;
        value
            .apply_merge()
            .map_err(|e| ConfigError::yaml(file, index, &e))?;
        if !value.is_null() {
            documents.push((index, value));
        }
    }
    Ok(documents)
}

/// The resource kinds daprd knows in a resources folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Component,
    SubscriptionV1,
    SubscriptionV2,
    Resiliency,
    HttpEndpoint,
    /// Loaded with `--config` only; silently ignored in a resources folder.
    Configuration,
    /// Known to daprd 1.18 but not handled by Tandem yet.
    Unsupported,
}

impl Kind {
    fn of(api_version: &str, kind: &str) -> Option<Self> {
        Some(match (api_version, kind) {
            ("dapr.io/v1alpha1", "Component") => Self::Component,
            ("dapr.io/v1alpha1", "Subscription") => Self::SubscriptionV1,
            ("dapr.io/v2alpha1", "Subscription") => Self::SubscriptionV2,
            ("dapr.io/v1alpha1", "Resiliency") => Self::Resiliency,
            ("dapr.io/v1alpha1", "HTTPEndpoint") => Self::HttpEndpoint,
            ("dapr.io/v1alpha1", "Configuration") => Self::Configuration,
            ("dapr.io/v1alpha1", "MCPServer" | "WorkflowAccessPolicy") => Self::Unsupported,
            _ => return None,
        })
    }
}

/// `apiVersion`, `kind` and `metadata` of a document. A `metadata` field of the wrong type is
/// an error only for the kinds that are loaded; other documents are skipped anyway.
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
    name: Result<Option<String>, FieldError>,
    namespace: Result<Option<String>, FieldError>,
}

impl Header {
    fn of(map: &serde_norway::Mapping) -> Self {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let metadata = get_field(map, "metadata");
        let meta_field = |key: &str| -> Result<Option<String>, FieldError> {
            match metadata
                .and_then(Value::as_mapping)
                .and_then(|m| get_field(m, key))
            {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
                Some(_) => Err(FieldError::new(
                    format!("metadata.{key}"),
                    "expected a string",
                )),
            }
        };
        Self {
            api_version: text(get_field(map, "apiVersion")),
            kind: text(get_field(map, "kind")),
            name: meta_field("name"),
            namespace: meta_field("namespace"),
        }
    }

    /// The name for messages, when readable.
    fn display_name(&self) -> Option<&str> {
        self.name.as_ref().ok().and_then(Option::as_deref)
    }
}

/// Checks `metadata.name` the way Kubernetes' `IsValidPathSegmentName` does.
fn check_name(name: Option<&str>) -> Result<&str, FieldError> {
    let name = name.ok_or_else(|| FieldError::required("metadata.name"))?;
    if name == "." || name == ".." {
        return Err(FieldError::new(
            "metadata.name",
            format!("name \"{name}\" is not a valid path segment"),
        ));
    }
    if name.contains(['/', '%']) {
        return Err(FieldError::new(
            "metadata.name",
            format!("name \"{name}\" is not a valid path segment: it may not contain '/' or '%'"),
        ));
    }
    Ok(name)
}

/// Accumulates resources from several files, then runs the cross-file checks.
pub(crate) struct Collector<'a> {
    ctx: &'a LoadContext,
    out: Resources,
}

impl<'a> Collector<'a> {
    /// An empty collector for `ctx`.
    pub(crate) fn new(ctx: &'a LoadContext) -> Self {
        Self {
            ctx,
            out: Resources::default(),
        }
    }

    /// Reads every `.yaml`/`.yml` file directly in `dir`, in file-name order.
    pub(crate) fn add_dir(&mut self, dir: &Path) -> Result<(), ConfigError> {
        let meta = std::fs::metadata(dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ConfigError::file(dir, "resources path does not exist")
            } else {
                ConfigError::file(dir, format!("cannot read the resources path: {e}"))
            }
        })?;
        if !meta.is_dir() {
            return Err(ConfigError::file(dir, "resources path is not a directory"));
        }
        let entries = std::fs::read_dir(dir)
            .map_err(|e| ConfigError::file(dir, format!("cannot list the resources path: {e}")))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                ConfigError::file(dir, format!("cannot list the resources path: {e}"))
            })?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
            if (name.ends_with(".yaml") || name.ends_with(".yml")) && path.is_file() {
                files.push((entry.file_name(), path));
            }
        }
        files.sort();
        for (_, path) in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::file(&path, format!("cannot read the file: {e}")))?;
            self.add_text(&text, &path)?;
        }
        Ok(())
    }

    /// Parses the documents of one file.
    pub(crate) fn add_text(&mut self, text: &str, file: &Path) -> Result<(), ConfigError> {
        for (index, value) in split_documents(text, file)? {
            self.add_document(value, file, index)?;
        }
        Ok(())
    }

    fn add_document(&mut self, value: Value, file: &Path, index: usize) -> Result<(), ConfigError> {
        let at = |kind: Option<&str>, name: Option<&str>, e: FieldError| {
            ConfigError::document(file, index, kind, name, e.field, e.message)
        };
        let skip = |kind: Option<&str>, name: Option<&str>, why: &str| {
            let mut line = format!("{}: document {index}", file.display());
            match (kind, name) {
                (Some(k), Some(n)) => line.push_str(&format!(" ({k} \"{n}\")")),
                (Some(k), None) => line.push_str(&format!(" ({k})")),
                _ => {}
            }
            line.push_str(": skipped: ");
            line.push_str(why);
            line
        };

        let Value::Mapping(map) = &value else {
            self.out.skipped.push(skip(None, None, "not a mapping"));
            return Ok(());
        };
        let header = Header::of(map);
        let (api_version, kind_name) = (
            header.api_version.as_deref().unwrap_or(""),
            header.kind.as_deref().unwrap_or(""),
        );
        let Some(kind) = Kind::of(api_version, kind_name) else {
            let why = format!("unknown apiVersion/kind \"{api_version}\"/\"{kind_name}\"");
            self.out
                .skipped
                .push(skip(header.kind.as_deref(), header.display_name(), &why));
            return Ok(());
        };
        let kind_name = Some(kind_name);
        match kind {
            Kind::Configuration => return Ok(()),
            Kind::Unsupported => {
                self.out.skipped.push(skip(
                    kind_name,
                    header.display_name(),
                    "this kind is not supported by tandem yet",
                ));
                return Ok(());
            }
            _ => {}
        }
        let name = header.name.clone().map_err(|e| at(kind_name, None, e))?;
        let name = check_name(name.as_deref())
            .map_err(|e| at(kind_name, name.as_deref(), e))?
            .to_owned();
        let namespace = header
            .namespace
            .map_err(|e| at(kind_name, Some(&name), e))?;
        let source = Source {
            file: file.to_path_buf(),
            document: index,
        };
        let err = |e| at(kind_name, Some(&name), e);

        // Decode first: a broken manifest is an error even when it is scoped to another app.
        let (scopes, resource) = match kind {
            Kind::Component => {
                let c = component::parse(value, name.clone(), namespace.clone(), source)
                    .map_err(err)?;
                (c.scopes.clone(), Parsed::Component(c))
            }
            Kind::SubscriptionV1 | Kind::SubscriptionV2 => {
                let v2 = kind == Kind::SubscriptionV2;
                let s = subscription::parse(value, v2, name.clone(), namespace.clone(), source)
                    .map_err(err)?;
                (s.scopes.clone(), Parsed::Subscription(s))
            }
            Kind::Resiliency => {
                let r = resiliency::parse(value, name.clone(), namespace.clone(), source)
                    .map_err(err)?;
                (r.scopes.clone(), Parsed::Resiliency(r))
            }
            Kind::HttpEndpoint => {
                let h = http_endpoint::parse(value, name.clone(), namespace.clone(), source)
                    .map_err(err)?;
                (h.scopes.clone(), Parsed::HttpEndpoint(h))
            }
            Kind::Configuration | Kind::Unsupported => unreachable!("handled above"),
        };

        if let (Some(ours), Some(theirs)) = (self.ctx.namespace.as_deref(), namespace.as_deref())
            && !ours.is_empty()
            && ours != theirs
        {
            let why = format!("namespace \"{theirs}\" is not this app's namespace \"{ours}\"");
            self.out.skipped.push(skip(kind_name, Some(&name), &why));
            return Ok(());
        }
        if !scopes.is_empty() && !scopes.contains(&self.ctx.app_id) {
            let why = format!(
                "scoped to other apps ({}), not \"{}\"",
                scopes.join(", "),
                self.ctx.app_id
            );
            self.out.skipped.push(skip(kind_name, Some(&name), &why));
            return Ok(());
        }
        match resource {
            Parsed::Component(c) => self.out.components.push(c),
            Parsed::Subscription(s) => self.out.subscriptions.push(s),
            Parsed::Resiliency(r) => self.out.resiliencies.push(r),
            Parsed::HttpEndpoint(h) => self.out.http_endpoints.push(h),
        }
        Ok(())
    }

    /// Runs the checks across all files: unique names per kind, resiliency policy references,
    /// template substitution in component metadata.
    pub(crate) fn finish(mut self) -> Result<Resources, ConfigError> {
        let out = &mut self.out;
        unique(
            "Component",
            out.components.iter().map(|c| (&c.name, &c.source)),
        )?;
        unique(
            "Subscription",
            out.subscriptions.iter().map(|s| (&s.name, &s.source)),
        )?;
        unique(
            "Resiliency",
            out.resiliencies.iter().map(|r| (&r.name, &r.source)),
        )?;
        unique(
            "HTTPEndpoint",
            out.http_endpoints.iter().map(|h| (&h.name, &h.source)),
        )?;

        let known = KnownPolicies::of(&out.resiliencies);
        for r in &out.resiliencies {
            resiliency::check_references(r, &known).map_err(|e| {
                ConfigError::document(
                    &r.source.file,
                    r.source.document,
                    Some("Resiliency"),
                    Some(&r.name),
                    e.field,
                    e.message,
                )
            })?;
        }

        for c in &mut out.components {
            component::apply_templates(c, self.ctx).map_err(|e| {
                ConfigError::document(
                    &c.source.file,
                    c.source.document,
                    Some("Component"),
                    Some(&c.name),
                    e.field,
                    e.message,
                )
            })?;
        }
        Ok(self.out)
    }
}

enum Parsed {
    Component(component::Component),
    Subscription(subscription::Subscription),
    Resiliency(resiliency::Resiliency),
    HttpEndpoint(http_endpoint::HttpEndpoint),
}

/// Fails on the second resource of `kind` with a name already used, naming both places.
fn unique<'r>(
    kind: &str,
    resources: impl Iterator<Item = (&'r String, &'r Source)>,
) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<&str, &Source> = BTreeMap::new();
    for (name, source) in resources {
        if let Some(first) = seen.insert(name, source) {
            return Err(ConfigError::document(
                &source.file,
                source.document,
                Some(kind),
                Some(name),
                Some("metadata.name".to_owned()),
                format!(
                    "duplicate {kind} name \"{name}\": already defined in {} document {}",
                    first.file.display(),
                    first.document
                ),
            ));
        }
    }
    Ok(())
}

/// Loads every resources folder in order (see [`crate::load_resources`]).
pub(crate) fn load(paths: &[PathBuf], ctx: &LoadContext) -> Result<Resources, ConfigError> {
    let mut collector = Collector::new(ctx);
    for dir in paths {
        collector.add_dir(dir)?;
    }
    collector.finish()
}
