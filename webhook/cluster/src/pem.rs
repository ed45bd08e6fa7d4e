//! PEM errors in words, for the webhook's certificate files and the caBundles the plugin checks:
//! the library prints marker lines as byte arrays.

use rustls::pki_types::pem;

/// What is wrong with a PEM input, in words that name the broken line or block.
pub fn describe_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("the {} block has no END line", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed BEGIN line {:?}", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(detail) => format!("the block is not valid base64 ({detail})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn error_of(text: &str) -> String {
        let e = CertificateDer::pem_slice_iter(text.as_bytes()).collect::<Result<Vec<_>, _>>().expect_err("broken PEM");
        describe_error(&e)
    }

    #[test]
    fn names_the_block_without_an_end_line() {
        let text = error_of("-----BEGIN CERTIFICATE-----\nAAAA\n");
        assert!(text.contains("CERTIFICATE") && text.contains("no END line"), "{text}");
        assert!(!text.contains('['), "markers in words, not bytes: {text}");
    }

    #[test]
    fn says_when_the_body_is_not_base64() {
        let text = error_of("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
        assert!(text.contains("not valid base64"), "{text}");
    }
}
