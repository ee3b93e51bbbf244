//! The types the crate's own unit tests write (`test.v1`: an account and a
//! user), compiled from `proto/test/v1/types.proto` into test builds only:
//! they are no part of the crate's descriptors or of any catalog it builds.

include!(concat!(env!("OUT_DIR"), "/test/test.v1.rs"));

/// The encoded descriptor set of the `test.v1` types.
pub(crate) const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/test/descriptors.bin"));

/// A catalog that knows the `test.v1` descriptors, with nothing registered.
pub(crate) fn unregistered() -> crate::TypeCatalog {
    let mut catalog = crate::TypeCatalog::new();
    catalog
        .add_file_descriptor_set(DESCRIPTOR_SET)
        .expect("the test descriptors are valid");
    catalog
}

/// A catalog with [`Account`] and [`User`] registered.
pub(crate) fn catalog() -> crate::TypeCatalog {
    let mut catalog = unregistered();
    for name in ["test.v1.Account", "test.v1.User"] {
        catalog.register(name).expect("the test types are valid");
    }
    catalog
}
