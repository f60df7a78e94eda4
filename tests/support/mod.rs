//! Test support shared by the integration tests (and, by path, the netns tests).

pub mod fake_kube;
