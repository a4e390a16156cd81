//! Integration tests of `tandem-config`, one module per topic, in one binary so the crate and
//! its dependencies are linked once.

mod common;

mod t10_validation;
mod t20_update;
mod t30_delete;
mod t40_query;
mod t50_access;
mod t60_document;
mod t61_document_yaml;
mod t90_indexes_prop;
