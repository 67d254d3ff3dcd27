use hyper::Method;

use super::*;

fn user(groups: &[&str]) -> User {
    User {
        name: "alice".into(),
        uid: "1".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

#[test]
fn bearer_tokens_are_read_from_the_authorization_header() {
    assert_eq!(bearer_token("Bearer abc"), Some("abc"));
    assert_eq!(bearer_token("bearer  abc "), Some("abc"));
    assert_eq!(bearer_token("Basic YWxhZGRpbjpvcGVuc2VzYW1l"), None);
    assert_eq!(bearer_token("Bearer "), None);
    assert_eq!(bearer_token("Bearer"), None);
    assert_eq!(bearer_token(""), None);
}

#[test]
fn tokens_are_found_only_whole() {
    let mut tokens = Tokens::default();
    assert!(tokens.insert("s3cret-token", user(&[])));
    assert_eq!(tokens.lookup("s3cret-token").unwrap().name, "alice");
    assert!(tokens.lookup("s3cret-toke").is_none());
    assert!(tokens.lookup("s3cret-token ").is_none());
    assert!(tokens.lookup("").is_none());
    assert!(!tokens.insert("s3cret-token", user(&["g"])), "a duplicate");
    assert_eq!(tokens.lookup("s3cret-token").unwrap().groups, ["g"]);
    assert_eq!(tokens.len(), 1);
}

#[test]
fn full_users_may_do_everything() {
    let admin = user(&["system:masters"]);
    for method in [Method::GET, Method::POST, Method::DELETE] {
        assert!(authorize(&admin, &method, "/api/v1/namespaces/default/pods/web/exec").is_ok());
    }
}

#[test]
fn viewers_may_read_but_not_write_or_enter_containers() {
    let viewer = user(&["team", VIEWERS_GROUP]);
    for path in [
        "/pods",
        "/api/v1/pods",
        "/api/v1/namespaces/default/pods/web",
        "/api/v1/namespaces/default/pods/web/log",
        "/describe/pods/default/web",
        "/metrics",
    ] {
        assert!(authorize(&viewer, &Method::GET, path).is_ok(), "{path}");
        assert!(authorize(&viewer, &Method::HEAD, path).is_ok(), "{path}");
        assert!(authorize(&viewer, &Method::POST, path).is_err(), "{path}");
        assert!(authorize(&viewer, &Method::DELETE, path).is_err(), "{path}");
    }
    for path in [
        "/api/v1/namespaces/default/pods/web/exec",
        "/api/v1/namespaces/default/pods/web/attach",
        "/api/v1/namespaces/default/pods/web/portforward",
        "/api/v1/namespaces/default/pods/web/proxy/x",
        "/exec/default/web/app",
        "/attach/default/web/app",
        "/run/default/web/app",
        "/portForward/default/web",
        "//api//v1/namespaces/default/pods/web/exec",
    ] {
        let refused = authorize(&viewer, &Method::GET, path).expect_err(path);
        assert!(
            refused.contains("alice") && refused.contains(VIEWERS_GROUP),
            "{refused}"
        );
    }
}

#[test]
fn a_client_certificate_names_the_user_by_cn_and_groups_by_o() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bob");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, VIEWERS_GROUP);
    let certificate = params.self_signed(&key).unwrap();
    let user = user_from_certificate(certificate.der()).unwrap();
    assert_eq!(user.name, "bob");
    assert_eq!(user.groups, [VIEWERS_GROUP]);
    assert!(user.is_viewer());

    let mut nameless = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    nameless.distinguished_name = rcgen::DistinguishedName::new();
    let certificate = nameless.self_signed(&key).unwrap();
    assert_eq!(user_from_certificate(certificate.der()), None);
    assert_eq!(user_from_certificate(b"not a certificate"), None);
}
