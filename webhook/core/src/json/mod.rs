//! JSON without building a document: byte scans that find where a string or a container ends
//! ([`scan`]), a cursor that reads a body in one pass, calling back per member and element and
//! skipping what it is not asked for ([`cursor`]), and a writer of compact JSON ([`writer`]).
//! The AdmissionReview schema, which fields are kept, is [`crate::review_reader`]'s.

pub(crate) mod cursor;
pub(crate) mod scan;
pub(crate) mod writer;
