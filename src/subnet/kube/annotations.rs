//! flannel's node annotation keys (`pkg/subnet/kube/annotations.go`): the
//! `--kube-annotation-prefix` normalised and validated exactly as flannel
//! does, and the keys built from it.

use std::sync::LazyLock;

/// flannel's default prefix.
pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com";

/// Why a prefix is refused (flannel's messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// More than one slash.
    #[error("subnet/kube: prefix can contain at most single slash")]
    TooManySlashes,
    /// Not an FQDN, a slash and a name.
    #[error("subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*")]
    BadFormat,
}

/// The annotation keys flannel reads and writes on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// The normalised prefix (`flannel.alpha.coreos.com/`, `example.com/x-`).
    pub prefix: String,
    /// `kube-subnet-manager`: the node is managed by flannel or weft.
    pub subnet_kube_managed: String,
    /// `backend-data`.
    pub backend_data: String,
    /// `backend-v6-data`.
    pub backend_v6_data: String,
    /// `backend-type`.
    pub backend_type: String,
    /// `public-ip`.
    pub public_ip: String,
    /// `public-ipv6`.
    pub public_ipv6: String,
    /// `node-public-ip`: replaces `--public-ip`.
    pub node_public_ip: String,
    /// `node-public-ipv6`.
    pub node_public_ipv6: String,
    /// `public-ip-overwrite`: published as `public-ip`.
    pub public_ip_overwrite: String,
    /// `public-ipv6-overwrite`.
    pub public_ipv6_overwrite: String,
}

// flannel's pattern, unanchored at the start as in Go's `regexp.MatchString`.
static PREFIX_FORMAT: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
        .expect("the prefix pattern is a valid regex")
});

impl Annotations {
    /// flannel's `newAnnotations`: at most one `/`; none → append `/`; a `/` but
    /// ending in neither `/` nor `-` → append `-`; then the format check.
    pub fn new(prefix: &str) -> Result<Annotations, PrefixError> {
        let slashes = prefix.matches('/').count();
        if slashes > 1 {
            return Err(PrefixError::TooManySlashes);
        }
        let mut prefix = prefix.to_owned();
        if slashes == 0 {
            prefix.push('/');
        }
        if !prefix.ends_with('/') && !prefix.ends_with('-') {
            prefix.push('-');
        }
        if !PREFIX_FORMAT.is_match(&prefix) {
            return Err(PrefixError::BadFormat);
        }
        let key = |suffix: &str| format!("{prefix}{suffix}");
        Ok(Annotations {
            subnet_kube_managed: key("kube-subnet-manager"),
            backend_data: key("backend-data"),
            backend_v6_data: key("backend-v6-data"),
            backend_type: key("backend-type"),
            public_ip: key("public-ip"),
            public_ipv6: key("public-ipv6"),
            node_public_ip: key("node-public-ip"),
            node_public_ipv6: key("node-public-ipv6"),
            public_ip_overwrite: key("public-ip-overwrite"),
            public_ipv6_overwrite: key("public-ipv6-overwrite"),
            prefix,
        })
    }
}

impl Default for Annotations {
    fn default() -> Self {
        Annotations::new(DEFAULT_PREFIX).expect("flannel's default prefix is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The cases of flannel's annotations_test.go, plus the error paths.
    #[test]
    fn prefixes_normalise_as_flannels() {
        let cases = [
            (
                "flannel.alpha.coreos.com",
                "flannel.alpha.coreos.com/backend-type",
            ),
            (
                "flannel.alpha.coreos.com/prefix",
                "flannel.alpha.coreos.com/prefix-backend-type",
            ),
            (
                "flannel.alpha.coreos.com/prefix-",
                "flannel.alpha.coreos.com/prefix-backend-type",
            ),
            ("example.com/", "example.com/backend-type"),
            ("a_b.c-d/x_y", "a_b.c-d/x_y-backend-type"),
            // Go's MatchString is unanchored at the start: flannel accepts these too.
            ("Flannel.Example.com", "Flannel.Example.com/backend-type"),
            ("exa mple.com", "exa mple.com/backend-type"),
        ];
        for (prefix, key) in cases {
            assert_eq!(
                Annotations::new(prefix).unwrap().backend_type,
                key,
                "{prefix}"
            );
        }
        let a = Annotations::default();
        assert_eq!(a.prefix, "flannel.alpha.coreos.com/");
        assert_eq!(
            a.subnet_kube_managed,
            "flannel.alpha.coreos.com/kube-subnet-manager"
        );
        assert_eq!(a.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(a.public_ip, "flannel.alpha.coreos.com/public-ip");
        assert_eq!(
            a.public_ip_overwrite,
            "flannel.alpha.coreos.com/public-ip-overwrite"
        );
        assert_eq!(a.node_public_ip, "flannel.alpha.coreos.com/node-public-ip");
    }

    #[test]
    fn bad_prefixes_get_flannels_errors() {
        let too_many = "subnet/kube: prefix can contain at most single slash";
        let format = "subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*";
        for (prefix, want) in [
            ("a.b/c/d", too_many),
            ("flannel", format),
            ("example.com/UPPER", format),
            ("", format),
            ("/x", format),
        ] {
            assert_eq!(
                Annotations::new(prefix).unwrap_err().to_string(),
                want,
                "{prefix:?}"
            );
        }
    }
}
